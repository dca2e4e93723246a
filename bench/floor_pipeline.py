"""The floor of usage metering's pipeline on this machine (run by ``bench_usage_metering``, part (a)).

A bare process reads its share of the ``usage.calls`` partitions (``getmany``, ``json.loads``),
records each batch's calls with the service's own deduplicating insert (the statement of
``MeterStore.claim_calls``, into a table of the same shape in the ``bench_raw`` database), commits
that transaction, then the offsets. Nothing else: no contract validation, no accounts or cycles
(the cycle is the call's month: the benchmark's accounts bill on day 1), no meters, alerts,
outbox or framework. As many processes run at once as the service has replicas, on the same
broker and PostgreSQL, so the rate they reach together is what any implementation of the
service could reach at most with this database design on this machine.

Run as a child: ``python -m bench.floor_pipeline DSN BOOTSTRAP TOPIC RANGES`` (RANGES: JSON
``{partition: [start, end]}``); prints one JSON line: records, first and last batch times, CPU.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.usage_metering.storage import CLAIM_CALLS

TABLE = "floor_calls"
CREATE_TABLE = (
    f"create table if not exists {TABLE} (account_id text, call_id text, cost numeric(20, 6) not null, "
    "cycle_start date not null, primary key (account_id, call_id))"  # as metering's `calls`
)
FLOOR_CLAIM = CLAIM_CALLS.replace("insert into calls ", f"insert into {TABLE} ")
assert FLOOR_CLAIM != CLAIM_CALLS, "metering's claim statement changed: update the floor's copy"


async def run(dsn: str, bootstrap: str, topic: str, ranges: dict[int, tuple[int, int]]) -> dict[str, float]:
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
            rows, offsets = [], {}
            for tp, records in fetched.items():
                for record in records:
                    if record.offset < ends[tp]:
                        call = json.loads(record.value)
                        rows.append((call["account_id"], call["call_id"], call["cost"], call["occurred_at"][:8] + "01"))
                offsets[tp] = records[-1].offset + 1
                if offsets[tp] >= ends[tp]:
                    left.discard(tp)
                    consumer.pause(tp)
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
    parsed = {int(p): (int(se[0]), int(se[1])) for p, se in json.loads(ranges).items()}
    print(json.dumps(asyncio.run(run(dsn, bootstrap, topic, parsed))), flush=True)


if __name__ == "__main__":
    main()
