"""What the metering worker does closed loop with streams shaped like the alert phase's.

The alert phase (d) of ``bench.bench_usage_metering`` costs about twice as much a call as (b).
This tells its causes apart, one stream at a time, each drained by the workers from a standing
start as (b) drains its range:

1. (d)'s schedule (background calls over (d)'s accounts, the crossings), sent open loop at
   ``--rate`` with the workers stopped, as (d) sends it (small producer batches);
2. the same shape produced in big batches (as (b)'s range is);
3. the same in big batches over ``--few-accounts`` background accounts.

Each prints the rate and the CPU a call of the workers, PostgreSQL and the broker. The accounts
of each stream are fresh (opened and armed by the workers first, as (d) does).
Run ``python -m bench.drain_alert_streams --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

from bench import bench_usage_metering as metering
from bench.common import (
    Bench,
    add_stack_arguments,
    begin,
    end_offsets,
    open_loop,
    produce_batched,
    producer,
    run_main,
    say,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=55_000, help="calls/s of the open-loop stream (default 55,000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured part of the schedule (default 20)")
    parser.add_argument("--warmup", type=float, default=10.0, help="warm-up part of the schedule (default 10)")
    parser.add_argument("--few-accounts", type=int, default=10_000, help="background accounts of stream 3")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on each waiting phase, seconds")
    add_stack_arguments(parser)
    return parser.parse_args()


async def drain_stream(
    bench: Bench, args: argparse.Namespace, name: str, background: int | None, batched: bool, rng: random.Random
) -> None:
    # (d)'s helpers name the accounts after the run's prefix: one prefix a stream keeps them apart.
    bench = dataclasses.replace(bench, prefix=f"{bench.prefix}{name}")
    plan = metering.plan_alerts(bench.prefix, args.rate, args.seconds, args.warmup, 20)
    if background is not None:
        plan.background_ids = plan.background_ids[:background]
    await metering.start_metering(bench.workers, args.replicas)
    kafka = producer(bench.stack)
    await kafka.start()
    try:
        levels = await metering.open_and_arm(bench, kafka, plan, rng, args.timeout)
        metering.stop_metering(bench.workers, args.replicas)
        items, _ = metering.alert_schedule(plan, levels, rng)
        starts = await end_offsets(bench.stack, [metering.CALLS])
        if batched:
            records = [(key, value) for _, _, _, key, value in items]
            await produce_batched(kafka, metering.CALLS, metering.USAGE_CALLS.partitions, records)
        else:
            sender = producer(bench.stack, linger_ms=0)
            await sender.start()
            try:
                await open_loop(sender, items, [0.0], batch_every=metering.GENERATOR_LINGER_S)
            finally:
                await sender.stop()
        ends = await end_offsets(bench.stack, [metering.CALLS])
    finally:
        await kafka.stop()
    await metering.reset_calls_offsets(bench.stack, starts)
    drained, cpu = await metering.drain(bench, args.replicas, starts, ends, args.timeout, f"[{name}]")
    metering.stop_metering(bench.workers, args.replicas)
    how = "produced in big batches" if batched else f"sent open loop at {args.rate:,}/s"
    cost = (
        metering.cpu_an_event(cpu, drained.rate)
        if drained.measured
        else "NOT MEASURED, most of the stream was done before the group was formed (more --rate or --seconds)"
    )
    say(f"[{name}] {how}, {len(plan.background_ids):,} background accounts: {drained.describe()}; CPU a call: {cost}")


async def main() -> int:
    args = parse_args()
    bench = await begin(
        args, "ds", "the metering worker over (d)-shaped streams", rate=args.rate, replicas=args.replicas
    )
    rng = random.Random(args.seed)
    try:
        await drain_stream(bench, args, "s1", None, False, rng)
        await drain_stream(bench, args, "s2", None, True, rng)
        await drain_stream(bench, args, "s3", args.few_accounts, True, rng)
    finally:
        bench.workers.stop_all()
    return 0


if __name__ == "__main__":
    run_main(main)
