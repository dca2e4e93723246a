"""Micro-benchmark of the order in which usage metering's calls path writes a batch: the two binary
``COPY``s of ``storage.MeterStore.record_calls`` (the ids into a table shaped like ``call_ids``, the
rows into one shaped like ``calls``, both with their keys), 5,000 calls a transaction over 10,000
accounts, with the rows in the order they came and sorted by account and call id, alternating.

It prints, for each order and round, the rows a second and PostgreSQL's CPU a call (the backend's
own, from ``/proc``: PostgreSQL must run on this machine). Each round starts on new tables right
after a ``CHECKPOINT``, so every round pays the same full-page images. It writes scratch tables
``bench_call_ids`` and ``bench_calls`` in the harness's ``postgres`` database (as the stack's
superuser) and drops them.
Run (on the bench stack, docs/benchmarks.md): ``.venv/bin/python -m bench.micro_copy_order``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import add_stack_arguments, connect, stack_from

ACCOUNTS, BATCH = 10_000, 5_000
DAY = date(2027, 3, 1)
CALL_IDS_COLUMNS = ["account_id", "call_id", "cycle_start"]
CALLS_COLUMNS = ["account_id", "call_id", "cost", "cycle_start", "seq", "billable", "over_cap"]
TABLES = (
    "create table bench_call_ids (account_id text, call_id text, cycle_start date not null, "
    "primary key (account_id, call_id))",
    "create table bench_calls (account_id text, call_id text not null, cost bigint not null, cycle_start date, "
    "seq integer, billable bigint not null, over_cap bigint not null, primary key (account_id, cycle_start, seq))",
)


def backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fresh_tables(conn: asyncpg.Connection) -> None:
    await conn.execute("drop table if exists bench_call_ids; drop table if exists bench_calls")
    for ddl in TABLES:
        await conn.execute(ddl)


def call_batches(calls: int, size: int, sort: bool) -> list[list[tuple[Any, ...]]]:
    """``calls`` rows shaped like ``calls`` over ``ACCOUNTS`` accounts, ``size`` a batch, each
    account's places numbered in order (the same rows every time: a fixed seed)."""
    rng = random.Random(1)
    seqs: dict[str, int] = {}
    batches = []
    for _ in range(calls // size):
        rows = []
        for _ in range(size):
            account = f"a-{rng.randrange(ACCOUNTS):05d}"
            seq = seqs[account] = seqs.get(account, 0) + 1
            rows.append((account, str(uuid.UUID(int=rng.getrandbits(128))), 1000, DAY, seq, 1000, 0))
        batches.append(sorted(rows) if sort else rows)
    return batches


async def one_round(conn: asyncpg.Connection, pid: int, order: str, calls: int) -> tuple[float, float]:
    """Fresh tables, ``calls`` calls written a batch at a time; (rows/s, PostgreSQL µs a call)."""
    await fresh_tables(conn)
    batches = call_batches(calls, BATCH, sort=order == "sorted")
    await conn.execute("checkpoint")
    cpu, started = backend_cpu_s(pid), time.perf_counter()
    for rows in batches:
        async with conn.transaction():
            ids = [(a, c, s) for a, c, _, s, _, _, _ in rows]
            await conn.copy_records_to_table("bench_call_ids", records=ids, columns=CALL_IDS_COLUMNS)
            await conn.copy_records_to_table("bench_calls", records=rows, columns=CALLS_COLUMNS)
    elapsed, used = time.perf_counter() - started, backend_cpu_s(pid) - cpu
    return calls / elapsed, 1e6 * used / calls


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls a round (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each order, alternating (default 3)")
    add_stack_arguments(parser)
    args = parser.parse_args()
    conn = await connect(stack_from(args), "postgres")
    try:
        pid = await conn.fetchval("select pg_backend_pid()")
        print(f"{args.calls:,} calls a round, {BATCH:,} a transaction over {ACCOUNTS:,} accounts, two keyed COPYs:")
        for n in range(args.rounds):
            for order in ("as they came", "sorted"):
                rate, pg = await one_round(conn, pid, order, args.calls)
                print(f"  round {n + 1}, {order}: {rate:,.0f} calls/s, PostgreSQL {pg:.2f} µs a call")
    finally:
        await conn.execute("drop table if exists bench_call_ids; drop table if exists bench_calls")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
