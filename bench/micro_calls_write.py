"""Micro-benchmark of how usage metering's calls path writes a batch of new calls, by batch size:
the two binary ``COPY``s (the ids into a table shaped like ``call_ids``, then the rows into one
shaped like ``calls``; two round trips each) against one statement that inserts both from arrays
(``unnest``; one round trip), each after a savepoint as ``storage.MeterStore.record_calls`` takes.

It prints, for each way and batch size, the time a batch takes (the client's wall clock, one
connection) and PostgreSQL's CPU a call (the backend's own, from ``/proc``: PostgreSQL must run on
this machine). A batch is sorted by account and call id, as the calls path writes it; the accounts
number 10,000. Each round starts on new tables right after a ``CHECKPOINT``. It writes scratch
tables ``bench_call_ids`` and ``bench_calls`` in the harness's ``postgres`` database (as the
stack's superuser) and drops them.
Run (on the bench stack, docs/benchmarks.md): ``.venv/bin/python -m bench.micro_calls_write``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from bench.common import add_stack_arguments, connect, stack_from
from bench.micro_copy_order import ACCOUNTS, CALL_IDS_COLUMNS, CALLS_COLUMNS, backend_cpu_s, call_batches, fresh_tables

SIZES = (25, 100, 350, 1000, 5000)
# As ``storage.INSERT_CALLS`` does, on the scratch tables.
INSERT_BOTH = (
    "with ids as (insert into bench_call_ids (account_id, call_id, cycle_start) "
    "select * from unnest($1::text[], $2::text[], $3::date[])) "
    "insert into bench_calls (account_id, call_id, cost, cycle_start, seq, billable, over_cap) "
    "select * from unnest($1::text[], $2::text[], $4::bigint[], $3::date[], $5::integer[], $6::bigint[], $7::bigint[])"
)


async def copy_twice(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    await conn.copy_records_to_table("bench_call_ids", records=[(*r[:2], r[3]) for r in rows], columns=CALL_IDS_COLUMNS)
    await conn.copy_records_to_table("bench_calls", records=rows, columns=CALLS_COLUMNS)


async def insert_once(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    a, c, cost, s, seq, billable, over = (list(column) for column in zip(*rows, strict=True))
    await conn.execute(INSERT_BOTH, a, c, s, cost, seq, billable, over)


WAYS = {"two COPYs": copy_twice, "one insert": insert_once}


async def one_round(conn: asyncpg.Connection, pid: int, way: str, size: int, calls: int) -> tuple[float, float]:
    """Fresh tables, ``calls`` calls written ``size`` a transaction; (ms a batch, PostgreSQL µs a call)."""
    await fresh_tables(conn)
    batches = call_batches(calls, size, sort=True)
    write = WAYS[way]
    await conn.execute("checkpoint")
    cpu, started = backend_cpu_s(pid), time.perf_counter()
    for rows in batches:
        async with conn.transaction():
            await conn.execute("savepoint before_calls")
            await write(conn, rows)
    elapsed, used = time.perf_counter() - started, backend_cpu_s(pid) - cpu
    return 1000 * elapsed / len(batches), 1e6 * used / (len(batches) * size)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls a round (default 200,000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each way and size, alternating (default 2)")
    add_stack_arguments(parser)
    args = parser.parse_args()
    conn = await connect(stack_from(args), "postgres")
    try:
        pid = await conn.fetchval("select pg_backend_pid()")
        print(f"{args.calls:,} calls a round over {ACCOUNTS:,} accounts, a transaction a batch:")
        for size in SIZES:
            for n in range(args.rounds):
                for way in WAYS:
                    ms, pg = await one_round(conn, pid, way, size, args.calls)
                    print(
                        f"  {size:5,} a batch, round {n + 1}, {way:10s}: {ms:7.2f} ms a batch, PostgreSQL {pg:.2f} µs a call"
                    )
    finally:
        await conn.execute("drop table if exists bench_call_ids; drop table if exists bench_calls")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
