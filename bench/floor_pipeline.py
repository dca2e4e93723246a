"""The floor of usage metering's pipeline on this machine (run by ``bench_usage_metering``, part (a)).

A bare process reads its share of the ``usage.calls`` partitions (``getmany``, ``json.loads``),
records each batch's calls with the service's own deduplicating insert (the statement of
``MeterStore.claim_calls``, into a table of the same shape in the ``bench_raw`` database), commits
that transaction, then the offsets. Nothing else: no accounts or cycles (the cycle is the call's
month: the benchmark's accounts bill on day 1), no meters, alerts, outbox or framework. As many
processes run at once as the service has replicas, on the same broker and PostgreSQL, so the
rate they reach together is what any implementation of the service could reach at most with
this database design on this machine.

With ``contract``, each batch is read as the service reads it instead of with ``json.loads``:
validated against the contract's ``CallCharged`` model, the batch's records joined into one JSON
array and parsed in one call. That is the least a service must do with an event it is given.

Run as a child: ``python -m bench.floor_pipeline DSN BOOTSTRAP TOPIC RANGES [contract]`` (RANGES:
JSON ``{partition: [start, end]}``); prints one JSON line: records, first and last batch times, CPU.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import TypeAdapter

from contracts.messages import CallCharged
from services.usage_metering.storage import CLAIM_CALLS

TABLE = "floor_calls"
CREATE_TABLE = (
    f"create table if not exists {TABLE} (account_id text, call_id text, cost numeric(20, 6) not null, "
    "cycle_start date not null, primary key (account_id, call_id))"  # as metering's `calls`
)
FLOOR_CLAIM = CLAIM_CALLS.replace("insert into calls ", f"insert into {TABLE} ")
assert FLOOR_CLAIM != CLAIM_CALLS, "metering's claim statement changed: update the floor's copy"
CALLS = TypeAdapter(list[CallCharged])


def _rows_decoded(values: list[bytes]) -> list[tuple[str, str, str, str]]:
    rows = []
    for value in values:
        call = json.loads(value)
        rows.append((call["account_id"], call["call_id"], call["cost"], call["occurred_at"][:8] + "01"))
    return rows


def _rows_validated(values: list[bytes]) -> list[tuple[str, str, str, str]]:
    calls = CALLS.validate_json(b"[" + b"\n,".join(values) + b"]")
    return [(c.account_id, c.call_id, str(c.cost), str(c.business_date.replace(day=1))) for c in calls]


async def run(
    dsn: str, bootstrap: str, topic: str, ranges: dict[int, tuple[int, int]], contract: bool
) -> dict[str, float]:
    rows_of = _rows_validated if contract else _rows_decoded
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 20, 100)  # as a metering worker
    conn = await asyncpg.connect(dsn)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=f"floor-{topic}", fetch_min_bytes=256 * 1024
    )
    await consumer.start()
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
            async with conn.transaction():
                await conn.fetch(FLOOR_CLAIM, json.dumps(rows, separators=(",", ":")))
            await consumer.commit(offsets)
            count += len(rows)
        return {"records": count, "first": first, "last": time.time(), "cpu": time.process_time() - cpu_start}
    finally:
        await consumer.stop()
        await conn.close()


def main() -> None:
    dsn, bootstrap, topic, ranges = sys.argv[1:5]
    contract = sys.argv[5:] == ["contract"]
    parsed = {int(p): (int(se[0]), int(se[1])) for p, se in json.loads(ranges).items()}
    print(json.dumps(asyncio.run(run(dsn, bootstrap, topic, parsed, contract))), flush=True)


if __name__ == "__main__":
    main()
