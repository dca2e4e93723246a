"""The floor of usage metering's pipeline on this machine (run by ``bench_usage_metering``, part (a)).

A bare process reads its share of the ``usage.calls`` partitions (``getmany``, ``json.loads``),
records each batch's calls with the service's deduplicating insert (the shape of
``storage.CLAIM_CALL_IDS``, on the four columns any calls ledger needs, into one keyed table in the
``bench_raw`` database), commits
that transaction, then the offsets. Nothing else: no accounts or cycles (the cycle is the call's
month: the benchmark's accounts bill on day 1), no meters, alerts, outbox or framework. As many
processes run at once as the service has replicas, on the same broker and PostgreSQL, so the
rate they reach together is what any implementation of the service could reach at most with
this database design on this machine.

The mode says how a batch is read and written:

- ``json``: each call read with ``json.loads``, recorded with the deduplicating insert;
- ``contract``: the batch read as the service reads it, validated against the contract's
  ``CallCharged`` model (its records joined into one JSON array, parsed in one call), recorded
  with the deduplicating insert. That is the least a service must do with an event it is given;
- ``copy``: each call read with ``json.loads``, the batch's repeats dropped in memory (in the
  batch, and every call id the process has recorded), the rest written by binary ``COPY`` into
  the same keyed table: the cheapest durable write any design of the calls ledger needs. A
  ``COPY`` that still hits the key (never, with the process's whole history in memory) falls back
  to the deduplicating insert, so the rows written are the same in every mode.

Run as a child: ``python -m bench.floor_pipeline BOOTSTRAP TOPIC RANGES MODE`` with the DSN in
``BENCH_FLOOR_DSN`` (RANGES: JSON ``{partition: [start, end]}``); prints one JSON line: records,
first and last batch times, CPU.

The ``live`` mode is (d)'s durable floor: ``python -m bench.floor_pipeline BOOTSTRAP TOPIC
PARTITIONS live MIN_BYTES LINGER_MS MARKER`` (PARTITIONS: a JSON list) reads its partitions from
their end as the service's calls consumer does (a fetch returns with MIN_BYTES or after
LINGER_MS), writes each batch as ``copy`` does and commits it; the offsets are committed every
0.1 s beside it, as the service's are. It prints ``ready`` once its positions are resolved, runs
until a line comes on stdin, then prints one JSON line: records, CPU, and for each call whose
``call_id`` is MARKER the wall-clock time its batch was committed, by message id.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import TypeAdapter

from contracts.messages import CallCharged
from deploy.credentials import STACK_PRINCIPAL, kafka_options

TABLE = "floor_calls"
DSN_VARIABLE = "BENCH_FLOOR_DSN"  # the DSN (it holds a password) comes in the environment, not argv
COLUMNS = ("account_id", "call_id", "cost", "cycle_start")
CREATE_TABLE = (
    f"create table if not exists {TABLE} (account_id text, call_id text, cost numeric(20, 6) not null, "
    "cycle_start date not null, primary key (account_id, call_id))"  # metering's key, in one table
)
# Metering's deduplicating insert (the shape of ``storage.CLAIM_CALL_IDS``) on the four columns every
# calls ledger needs; metering's own claims the ids in ``call_ids``, then writes the calls with what
# its fold decided for each (its place and parts) into the partitioned ``calls``.
FLOOR_CLAIM = (
    "with given as (select r->>0 as a, r->>1 as c, (r->>2)::numeric as k, (r->>3)::date as s, i - 1 as i "
    "from jsonb_array_elements($1::jsonb) with ordinality as t(r, i)), "
    f"fresh as (insert into {TABLE} (account_id, call_id, cost, cycle_start) select a, c, k, s from given "
    "on conflict do nothing returning account_id, call_id) "
    "select i from given where not exists (select from fresh where account_id = a and call_id = c)"
)
CALLS = TypeAdapter(list[CallCharged])
MODES = ("json", "contract", "copy", "live")
OFFSETS_EVERY_S = 0.1  # usage metering's offset_commit_interval_ms
Row = tuple[str, str, Any, Any]


def _row(call: dict[str, Any]) -> Row:
    return call["account_id"], call["call_id"], call["cost"], call["occurred_at"][:8] + "01"


def _rows_decoded(values: list[bytes]) -> list[Row]:
    return [_row(json.loads(value)) for value in values]


def _rows_validated(values: list[bytes]) -> list[Row]:
    calls = CALLS.validate_json(b"[" + b"\n,".join(values) + b"]")
    return [(c.account_id, c.call_id, str(c.cost), str(c.business_date.replace(day=1))) for c in calls]


def _claimer(conn: asyncpg.Connection) -> Callable[[list[Row]], Awaitable[None]]:
    """The deduplicating insert, one transaction a batch (``json`` and ``contract``)."""

    async def claim(rows: list[Row]) -> None:
        async with conn.transaction():
            await conn.fetch(FLOOR_CLAIM, json.dumps(rows, separators=(",", ":")))

    return claim


def _copier(conn: asyncpg.Connection) -> Callable[[list[Row]], Awaitable[None]]:
    """Repeats dropped in memory, the new calls by binary ``COPY`` (``copy``); a batch whose
    ``COPY`` hits the key is recorded again with the deduplicating insert."""
    recorded: set[tuple[str, str]] = set()
    months: dict[str, date] = {}
    claim = _claimer(conn)

    async def copy(rows: list[Row]) -> None:
        fresh: list[Row] = []
        for account_id, call_id, cost, month in rows:
            key = (account_id, call_id)
            if key in recorded:
                continue
            recorded.add(key)
            start = months.get(month) or months.setdefault(month, date.fromisoformat(month))
            fresh.append((account_id, call_id, Decimal(cost), start))
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(TABLE, records=fresh, columns=COLUMNS)
        except asyncpg.UniqueViolationError:
            await claim(rows)

    return copy


def _collect_like_a_worker() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 20, 100)  # as a metering worker


async def _consumer(bootstrap: str, topic: str, **fetch: int) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=f"floor-{topic}",
        **fetch,
        **kafka_options(STACK_PRINCIPAL),  # the harness's principal (bench/common.py kafka_security)
    )
    await consumer.start()
    return consumer


async def run(dsn: str, bootstrap: str, topic: str, ranges: dict[int, tuple[int, int]], mode: str) -> dict[str, float]:
    rows_of = _rows_validated if mode == "contract" else _rows_decoded
    _collect_like_a_worker()
    conn = await asyncpg.connect(dsn)
    write = _copier(conn) if mode == "copy" else _claimer(conn)
    consumer = await _consumer(bootstrap, topic, fetch_min_bytes=256 * 1024)
    try:
        ends = {TopicPartition(topic, p): end for p, (_, end) in ranges.items()}
        consumer.assign(list(ends))
        for p, (start, _) in ranges.items():
            consumer.seek(TopicPartition(topic, p), start)
        left = {tp for tp, end in ends.items() if end > ranges[tp.partition][0]}
        count, first, cpu_start = 0, 0.0, 0.0
        while left:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if not fetched:
                continue
            if not first:
                first, cpu_start = time.time(), time.process_time()
            values: list[bytes] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in fetched.items():
                values.extend(record.value for record in records if record.offset < ends[tp])
                offsets[tp] = records[-1].offset + 1
                if offsets[tp] >= ends[tp]:
                    left.discard(tp)
                    consumer.pause(tp)
            rows = rows_of(values)
            await write(rows)
            await consumer.commit(offsets)
            count += len(rows)
        return {"records": count, "first": first, "last": time.time(), "cpu": time.process_time() - cpu_start}
    finally:
        await consumer.stop()
        await conn.close()


async def run_live(
    dsn: str, bootstrap: str, topic: str, partitions: list[int], fetch: tuple[int, int], marker: str
) -> dict[str, Any]:
    """(d)'s durable floor: read from the end, each batch by ``COPY`` and committed, until stdin
    gives a line; the commit time of each call marked ``marker``. ``fetch``: the calls consumer's
    (fetch_min_bytes, linger in ms)."""
    fetch_min_bytes, linger_ms = fetch
    _collect_like_a_worker()
    conn = await asyncpg.connect(dsn)
    write = _copier(conn)
    consumer = await _consumer(bootstrap, topic, fetch_min_bytes=fetch_min_bytes, fetch_max_wait_ms=linger_ms)
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.readline)
    offsets: dict[TopicPartition, int] = {}
    committer: asyncio.Task[None] | None = None

    async def commit_offsets() -> None:
        while True:
            await asyncio.sleep(OFFSETS_EVERY_S)
            if offsets:
                await consumer.commit(dict(offsets))

    try:
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:
            await consumer.position(tp)
        print("ready", flush=True)
        committer = asyncio.create_task(commit_offsets())
        committed: dict[str, float] = {}
        count, cpu_start = 0, time.process_time()
        while not stop.done():
            fetched = await consumer.getmany(timeout_ms=100, max_records=5000)
            if not fetched:
                continue
            rows: list[Row] = []
            marked: list[str] = []
            for tp, records in fetched.items():
                for record in records:
                    call = json.loads(record.value)
                    rows.append(_row(call))
                    if call["call_id"] == marker:
                        marked.append(call["message_id"])
                offsets[tp] = records[-1].offset + 1
            await write(rows)
            done = time.time()
            committed.update((message_id, done) for message_id in marked)
            count += len(rows)
        return {"records": count, "cpu": time.process_time() - cpu_start, "committed": committed}
    finally:
        if committer is not None:
            committer.cancel()
        await consumer.stop()
        await conn.close()


def main() -> None:
    bootstrap, topic, ranges, mode = sys.argv[1:5]
    dsn = os.environ[DSN_VARIABLE]
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "live":
        fetch, marker = (int(sys.argv[5]), int(sys.argv[6])), sys.argv[7]
        print(json.dumps(asyncio.run(run_live(dsn, bootstrap, topic, json.loads(ranges), fetch, marker))))
        return
    parsed = {int(p): (int(se[0]), int(se[1])) for p, se in json.loads(ranges).items()}
    print(json.dumps(asyncio.run(run(dsn, bootstrap, topic, parsed, mode))), flush=True)


if __name__ == "__main__":
    main()
