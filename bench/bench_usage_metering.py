"""Usage metering benchmark: a million charged calls, the raw limits, a replay, and alert latency.

1. Opens ``--accounts`` accounts (the metering worker records them), stops the worker, then
   fills ``usage.calls`` with ``--events`` realistic ``CallCharged`` (costs 0.01-3.00 USD with
   6 decimals, ~1 % duplicate reports), pre-serialised and sent in batches.
2. (a) raw limits, same run: a bare aiokafka consumer (``getmany`` + ``json.loads``, nothing else)
   reading exactly that range, and a bare asyncpg set-based insert of the same rows; then the
   floor pipeline: as many bare processes as replicas, reading the range and recording the calls
   with metering's own deduplicating insert, nothing else (bench/floor_pipeline.py), once with
   ``json.loads`` and once validating each call against the contract's model. What they reach
   is the most any implementation of the service could reach with these tables here.
3. (b) starts the worker with the group's offsets at the start of the range and times it until
   the ``usage-metering`` group has committed the end of the range; checks the accrual.
4. (c) replay: stops the worker, rewinds the group to the start of the range, lets it process
   the same events again, and shows the accrual (meters, calls) did not change.
5. (d) open-loop alert latency at half the sustained rate: background calls plus calls that take
   "armed" accounts (sitting just under 50/80/100 % of the cap) over a threshold; latency is the
   ``CallingCreditThresholdReached`` arrival minus the crossing call's intended send time. The
   open loop starts with ``--alert-warmup`` seconds of background calls at the same rate, not
   counted: on a broker started minutes before, the produce path at that rate is new and its JIT
   compilation takes a share of the two cores (the license-orders benchmark warms up likewise).

Targets: >= 25,000 events/s, >= 40 % of the raw consumer rate, alert p99 <= 100 ms.
Run ``python -m bench.bench_usage_metering --help``; docs/benchmarks.md has the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bench import floor_pipeline
from bench.common import (
    SERVICE_GROUPS,
    Admin,
    BacklogMonitor,
    CommitProbe,
    CpuSampler,
    KeyPartitioner,
    Reader,
    Stack,
    Workers,
    account_opened_json,
    add_stack_arguments,
    banner,
    call_json,
    check_contract,
    connect,
    end_offsets,
    latency_line,
    micro_cost,
    money_text,
    new_id,
    now,
    open_loop,
    p99_ms,
    percentile,
    produce_batched,
    producer,
    provision,
    replica_names,
    replicas_cpu,
    run_main,
    run_prefix,
    say,
    set_group_offsets,
    stack_from,
    verdict,
    wait_for,
)
from contracts.messages import AccountOpened, CallCharged
from contracts.topics import PLATFORM_ACCOUNTS, USAGE_CALLS
from services.usage_metering.settings import Settings as MeteringSettings
from shared.runtime.worker import tune_garbage_collector

SERVICE = "usage_metering"
GROUP = SERVICE_GROUPS[SERVICE]
CALLS = USAGE_CALLS.name
OPENED_AT = "2027-03-01T00:00:00+00:00"  # billing day 1: the open cycle is 2027-03-01..2027-04-01
CYCLE_DAYS = 30  # calls fall on March 1..30
CAP_MICROS = 250_000_000  # the default cap, 250.00
ARMED_LEVELS = (124_990_000, 199_990_000, 249_990_000)  # just under 50 %, 80 %, 100 % of the cap
THRESHOLD_OF_LEVEL = {124_990_000: 50, 199_990_000: 80, 249_990_000: 100}
TRIGGER_COST = 500_000  # 0.50: takes an armed account over its threshold


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_usage_metering",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, help="CallCharged events to fill (default 1,000,000; --quick 50,000)")
    parser.add_argument("--accounts", type=int, help="accounts the calls spread over (default 10,000; --quick 1,000)")
    parser.add_argument("--dup-rate", type=float, default=0.01, help="share of duplicate reports (default 0.01)")
    parser.add_argument("--alert-seconds", type=float, help="open-loop alert phase length (default 20 s; --quick 5 s)")
    parser.add_argument(
        "--alert-rate",
        type=int,
        default=0,
        help="calls/s in the alert phase (default: half the measured sustained rate)",
    )
    parser.add_argument(
        "--alert-warmup",
        type=float,
        help="seconds of background calls at the alert rate before (d) measures, not counted (default 10; --quick 0)",
    )
    parser.add_argument("--crossings", type=int, default=20, help="threshold-crossing calls per second (default 20)")
    parser.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="usage-metering processes in the consumer group (default 2: one per core; usage.calls has 12 partitions)",
    )
    parser.add_argument("--skip-replay", action="store_true", help="skip (c)")
    parser.add_argument("--skip-alerts", action="store_true", help="skip (d)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on each waiting phase, seconds")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50,000 events, 1,000 accounts, 5 s alert phase"
    )
    add_stack_arguments(parser)
    args = parser.parse_args()
    full, quick = (1_000_000, 10_000, 20.0, 10.0), (50_000, 1_000, 5.0, 0.0)
    names = ("events", "accounts", "alert_seconds", "alert_warmup")
    for name, default in zip(names, quick if args.quick else full, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.alert_warmup < 0 or args.alert_seconds <= 0:
        parser.error("--alert-warmup must be >= 0 and --alert-seconds > 0")
    return args


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """Account ids of this run sort between these (ids use [A-Za-z0-9_-], all below '~')."""
    return f"{prefix}-", f"{prefix}-~"


@dataclass
class Fill:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    unique: int = 0
    duplicates: int = 0
    total_micros: int = 0
    raw_accounts: list[str] = field(default_factory=list)
    raw_calls: list[str] = field(default_factory=list)
    raw_costs: list[str] = field(default_factory=list)


def occurred_at(i: int, n: int) -> str:
    t = i * CYCLE_DAYS * 86400 // max(n, 1)
    day, rest = divmod(t, 86400)
    return f"2027-03-{day + 1:02d}T{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}+00:00"


def make_fill(prefix: str, accounts: int, events: int, dup_rate: float, rng: random.Random) -> Fill:
    """The calls, pre-serialised: each (key, value); ~dup_rate of them report an earlier call again.

    Half the duplicates are redeliveries (same message, same message_id), half re-reports
    (same call_id, new message_id): the inbox drops the first kind, the calls table the second.
    """
    fill = Fill()
    recent: list[tuple[str, str, str, int, bytes]] = []  # account, call id, occurred_at, cost, value
    for i in range(events):
        if recent and rng.random() < dup_rate:
            account, call_id, when, cost, value = recent[rng.randrange(len(recent))]
            if rng.random() < 0.5:
                value = call_json(new_id(), account, when, call_id, money_text(cost))
            fill.duplicates += 1
        else:
            account = f"{prefix}-{rng.randrange(accounts):05d}"
            call_id = f"call-{i:08d}"
            when = occurred_at(i, events)
            cost = micro_cost(rng)
            value = call_json(new_id(), account, when, call_id, money_text(cost))
            fill.unique += 1
            fill.total_micros += cost
            if len(recent) < 5000:
                recent.append((account, call_id, when, cost, value))
            else:
                recent[rng.randrange(5000)] = (account, call_id, when, cost, value)
        fill.records.append((account.encode(), value))
        fill.raw_accounts.append(account)
        fill.raw_calls.append(call_id)
        fill.raw_costs.append(money_text(cost))
    return fill


async def accrual(stack: Stack, prefix: str) -> tuple[int, Decimal, Decimal, int]:
    """(meters, sum billable, sum over_cap, calls) of this run's accounts."""
    lo, hi = prefix_bounds(prefix)
    conn = await connect(stack, "usage_metering")
    try:
        meters = await conn.fetchrow(
            "select count(*), coalesce(sum(billable), 0), coalesce(sum(over_cap), 0) from meters "
            "where account_id between $1 and $2",
            lo,
            hi,
        )
        calls = await conn.fetchval("select count(*) from calls where account_id between $1 and $2", lo, hi)
        return int(meters[0]), Decimal(meters[1]), Decimal(meters[2]), int(calls)
    finally:
        await conn.close()


async def raw_consumer_rate(
    stack: Stack, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int], timeout: float
) -> tuple[int, float]:
    """(records, seconds) for a bare consumer reading [starts, ends): getmany + json.loads, nothing else."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(ends))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        wanted = {tp: end for tp, end in ends.items() if end > starts[tp]}
        count = 0
        started = now()
        while wanted:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        json.loads(record.value)
                        count += 1
                if tp in wanted and records and records[-1].offset + 1 >= wanted[tp]:
                    del wanted[tp]
                    consumer.pause(tp)
            if now() - started > timeout:
                raise TimeoutError("raw consumer did not reach the end of the range")
        return count, now() - started
    finally:
        await consumer.stop()


@contextlib.contextmanager
def garbage_collected_like_a_worker() -> Iterator[None]:
    """The raw consumer runs in this process, next to ~1 GB of generated events: freeze them and
    tune the collector as a worker does (``tune_garbage_collector``), or the baseline would pay
    for full collections of the generator's objects and the ratio would flatter the service."""
    before = gc.get_threshold()
    callbacks = list(gc.callbacks)
    tune_garbage_collector(MeteringSettings().gc_young_threshold)  # the metering worker's, not the shared default
    try:
        yield
    finally:
        gc.unfreeze()  # nothing else in this script freezes while the raw consumer runs
        gc.set_threshold(*before)
        gc.callbacks[:] = callbacks


async def raw_insert_rate(stack: Stack, fill: Fill, batch: int = 5000) -> tuple[int, float]:
    """A bare asyncpg set-based insert of the same rows (unnest, on conflict do nothing, returning),
    in transactions of ``batch`` rows, into a logged table of its own database ``bench_raw``."""
    admin = await connect(stack, "postgres")
    try:
        if not await admin.fetchval("select true from pg_database where datname = 'bench_raw'"):
            await admin.execute("create database bench_raw")
    finally:
        await admin.close()
    conn = await connect(stack, "bench_raw")
    try:
        await conn.execute(
            "create table if not exists raw_calls (account_id text, call_id text, cost numeric(20, 6) not null, "
            "cycle_start date not null, primary key (account_id, call_id))"
        )
        await conn.execute("truncate raw_calls")
        started = now()
        inserted = 0
        for i in range(0, len(fill.raw_accounts), batch):
            rows = await conn.fetch(
                "insert into raw_calls select a, c, k::numeric, date '2027-03-01' "
                "from unnest($1::text[], $2::text[], $3::text[]) as r(a, c, k) "
                "on conflict do nothing returning account_id, call_id",
                fill.raw_accounts[i : i + batch],
                fill.raw_calls[i : i + batch],
                fill.raw_costs[i : i + batch],
            )
            inserted += len(rows)
        elapsed = now() - started
        await conn.execute("truncate raw_calls")
        return inserted, elapsed
    finally:
        await conn.close()


async def floor_rate(
    stack: Stack,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    processes: int,
    contract: bool,
    timeout: float,
) -> tuple[int, float, float]:
    """(records, seconds, process CPU seconds) for ``processes`` bare processes reading the range
    and recording the calls with metering's deduplicating insert, nothing else (bench/floor_pipeline.py);
    ``contract``: each call validated against the contract's model, as the service reads it."""
    conn = await connect(stack, "bench_raw")  # created by raw_insert_rate
    try:
        await conn.execute(floor_pipeline.CREATE_TABLE)
        await conn.execute(f"truncate {floor_pipeline.TABLE}")
    finally:
        await conn.close()
    partitions = sorted(ends, key=lambda tp: tp.partition)
    children = []
    for share in range(processes):
        ranges = {tp.partition: (starts[tp], ends[tp]) for tp in partitions[share::processes]}
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.floor_pipeline",
                stack.dsn("bench_raw"),
                stack.bootstrap,
                CALLS,
                json.dumps(ranges),
                *(["contract"] if contract else []),
                stdout=asyncio.subprocess.PIPE,
            )
        )
    try:
        outputs = [await asyncio.wait_for(child.communicate(), timeout) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
    if any(child.returncode for child in children):
        raise RuntimeError("a floor pipeline process failed (its error is above)")
    results = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    conn = await connect(stack, "bench_raw")
    try:
        await conn.execute(f"truncate {floor_pipeline.TABLE}")
    finally:
        await conn.close()
    timed = [r for r in results if r["records"]] or results  # a process whose partitions held nothing has no times
    span = max(r["last"] for r in timed) - min(r["first"] for r in timed)
    return sum(r["records"] for r in results), span, sum(r["cpu"] for r in results)


@dataclass
class Drain:
    """How the group worked through the range. The rate runs from the first sample at which the
    whole group was formed (every consumer of every replica a member, the group stable) to the
    last commit, counting only the events committed after that sample. Before it, the workers
    start (imports, migrations) and join one consumer at a time, each join stopping the group
    for a rebalance, while the first members already consume: reported apart as start-up."""

    events: int
    spawned: float
    steady_rate: float
    samples: list[tuple[float, int, bool]]  # (when, events committed, whole group formed)

    @property
    def _formed(self) -> tuple[float, int, bool] | None:
        return next((sample for sample in self.samples if sample[2]), None)

    @property
    def timed_events(self) -> int:
        formed = self._formed
        return self.events - formed[1] if formed else 0

    @property
    def timed_seconds(self) -> float:
        formed = self._formed
        return self.samples[-1][0] - formed[0] if formed else 0.0

    @property
    def rate(self) -> float:
        return self.timed_events / self.timed_seconds if self.timed_seconds > 0 else float("nan")

    @property
    def measured(self) -> bool:
        """False when most of the range was committed before the group was formed (a --quick
        range): the rate then says nothing."""
        return self.timed_seconds > 0 and self.timed_events >= 0.5 * self.events

    def describe(self) -> str:
        formed = self._formed
        startup = formed[0] - self.spawned if formed else float("nan")
        whole = self.samples[-1][0] - self.spawned
        return (
            f"{self.timed_events:,} events from the group formed to the last commit in {self.timed_seconds:.1f} s = "
            f"{self.rate:,.0f} events/s (steady 10-90 %: {self.steady_rate:,.0f}/s); start-up {startup:.1f} s, "
            f"in which {self.events - self.timed_events:,} were done (spawn -> last commit: "
            f"{self.events / whole:,.0f} events/s)"
        )


REPLICAS = 1  # set from --replicas in main()


def metering_replicas() -> list[str]:
    return replica_names(SERVICE, REPLICAS)


async def start_metering(workers: Workers) -> None:
    """Start the usage-metering replicas (one consumer group); returns when all are ready."""
    for name in metering_replicas():
        workers.start(SERVICE, name)
    for name in metering_replicas():
        await workers.wait_ready(name)


def group_members() -> int:
    """Consumers the replicas put in the group (the workers read the same BILLING_* environment)."""
    settings = MeteringSettings()
    return REPLICAS * (settings.calls_consumers + settings.consumers_per_subscription)


def stop_metering(workers: Workers) -> None:
    for name in metering_replicas():
        workers.stop(name)


async def drain(
    stack: Stack,
    workers: Workers,
    sampler: CpuSampler,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    timeout: float,
    label: str,
) -> tuple[Drain, dict[str, tuple[float, float]]]:
    """Start the workers and sample the group until it committed ``ends`` on usage.calls (``Drain``
    times the rate from the first sample at which the whole group was formed)."""
    total = sum(ends[tp] - starts[tp] for tp in ends)
    spawned = now()
    await start_metering(workers)
    samples: list[tuple[float, int, bool]] = []
    members = group_members()
    async with Admin(stack) as admin:

        async def done() -> bool:
            workers.check_alive()
            state, joined = await admin.state(GROUP)
            committed = await admin.committed(GROUP, list(ends))
            progress = sum(min(max(committed[tp], starts[tp]), ends[tp]) - starts[tp] for tp in ends)
            formed = (state == "Stable" and joined == members) or bool(samples and samples[-1][2])
            samples.append((now(), progress, formed))
            return progress >= total

        def progress() -> str:
            return f"{samples[-1][1]:,}/{total:,} committed" if samples else "starting"

        with sampler.phase(f"{label} worker") as cpu:
            await wait_for(done, timeout, f"{label}: {GROUP} to commit the range", interval=0.25, progress=progress)
    return Drain(total, spawned, steady_rate(samples, total), samples), cpu


def steady_rate(samples: list[tuple[float, int, bool]], total: int) -> float:
    """Rate between the samples at >= 10 % and >= 90 % of the range (leaves out start-up and the tail)."""
    low = next(((t, n) for t, n, _ in samples if n >= 0.1 * total), None)
    high = next(((t, n) for t, n, _ in samples if n >= 0.9 * total), None)
    if low is None or high is None or high[0] <= low[0]:
        return float("nan")
    return (high[1] - low[1]) / (high[0] - low[0])


async def reset_calls_offsets(stack: Stack, starts: dict[TopicPartition, int]) -> None:
    async with Admin(stack) as admin:
        await admin.wait_empty(GROUP)
    await set_group_offsets(stack, GROUP, starts)


# ------------------------------------------------------------------------------------ (d) alert latency


FALLBACK_ALERT_RATE = 5_000
GENERATOR_LINGER_S = 0.005  # what a platform producer with linger.ms=5 does, at a fraction of the CPU


def arming_calls(level: int, rng: random.Random) -> list[int]:
    """Costs (0.01-3.00) summing exactly to ``level`` micro-USD."""
    costs: list[int] = []
    left = level
    while left > 3_000_000:
        cost = micro_cost(rng)
        if left - cost < 10_000:
            continue
        costs.append(cost)
        left -= cost
    costs.append(left)
    return costs


async def alert_latency(
    stack: Stack,
    workers: Workers,
    sampler: CpuSampler,
    prefix: str,
    rate: int,
    seconds: float,
    warmup: float,
    crossings: int,
    timeout: float,
    rng: random.Random,
) -> dict[str, Any]:
    total = int(rate * seconds)
    warming = int(rate * warmup)  # background calls only, sent first, not counted
    armed = max(3, min(int(crossings * seconds), total // 4))
    background = max(500, (warming + total) // 40)  # ~40 calls of ~1.50 each: far below 50 % of the cap
    # Armed accounts all hash to partition 0 of usage.calls, so the bare consumer that measures the
    # transport floor reads 1/12 of the traffic (the load generator stays light).
    partition_of = KeyPartitioner(USAGE_CALLS.partitions)
    armed_ids: list[str] = []
    n = 0
    while len(armed_ids) < armed:
        candidate = f"{prefix}-ar{n:06d}"
        n += 1
        if partition_of(candidate.encode()) == 0:
            armed_ids.append(candidate)
    background_ids = [f"{prefix}-bg{i:06d}" for i in range(background)]
    say(
        f"(d) alert latency: {total:,} calls at {rate:,}/s for {seconds:.0f} s "
        f"{f'after a {warmup:g}-s warm-up at that rate' if warming else '(no warm-up)'}; {armed} threshold crossings "
        f"({crossings}/s) on armed accounts, the rest on {background:,} background accounts"
    )
    # (d)'s own accounts only ("-ar..." and "-bg..."; the run's (b) accounts "-00000"... sort before them).
    lo, hi = f"{prefix}-ar", f"{prefix}-bg~"
    kafka = producer(stack)
    await kafka.start()
    try:
        ids = armed_ids + background_ids
        await produce_batched(
            kafka,
            PLATFORM_ACCOUNTS.name,
            PLATFORM_ACCOUNTS.partitions,
            ((a.encode(), account_opened_json(new_id(), a, OPENED_AT)) for a in ids),
        )
        conn = await connect(stack, "usage_metering")
        try:
            await wait_for(
                lambda: _count_is(
                    conn, "select count(*) from accounts where account_id between $1 and $2", lo, hi, len(ids)
                ),
                timeout,
                "(d) the worker to open the fresh accounts",
            )
            # Arm: bring each armed account just under its threshold with ordinary calls.
            levels = [ARMED_LEVELS[i % 3] for i in range(armed)]
            arm_records = []
            expected_micros = 0
            for account, level in zip(armed_ids, levels, strict=True):
                for n, cost in enumerate(arming_calls(level, rng)):
                    arm_records.append(
                        (
                            account.encode(),
                            call_json(new_id(), account, "2027-03-02T08:00:00+00:00", f"arm-{n}", money_text(cost)),
                        )
                    )
                expected_micros += level
            await produce_batched(kafka, CALLS, USAGE_CALLS.partitions, arm_records)
            expected = Decimal(expected_micros) / 1_000_000
            armed_lo, armed_hi = f"{prefix}-ar", f"{prefix}-ar~"
            await wait_for(
                lambda: _sum_is(
                    conn,
                    "select coalesce(sum(billable), 0) from meters where account_id between $1 and $2",
                    armed_lo,
                    armed_hi,
                    expected,
                ),
                timeout,
                f"(d) the worker to arm {armed} accounts ({len(arm_records):,} calls)",
            )
        finally:
            await conn.close()

        # The schedule: slot i at i/rate; after the warm-up, every (total/armed)-th slot is a crossing call.
        step = total / armed
        crossing_slots = {warming + int(k * step + step / 2): k for k in range(armed)}
        intended: dict[str, tuple[float, int]] = {}
        items: list[tuple[float, str, int, bytes, bytes]] = []
        for i in range(warming + total):
            at = i / rate
            when = "2027-03-03T09:00:00+00:00"
            k = crossing_slots.get(i)
            message_id = new_id()
            if k is not None:
                account = armed_ids[k]
                value = call_json(message_id, account, when, "crossing", money_text(TRIGGER_COST))
                intended[message_id] = (at, THRESHOLD_OF_LEVEL[levels[k]])
            else:
                account = background_ids[rng.randrange(background)]
                value = call_json(message_id, account, when, f"bg-{i}", money_text(micro_cost(rng)))
            key = account.encode()
            items.append((at, CALLS, partition_of(key), key, value))
        check_contract(CallCharged, items[0][4])

        latencies: list[float] = []
        transport: list[float] = []
        by_threshold: Counter[int] = Counter()
        start_box: list[float] = [0.0]
        armed_keys = {a.encode() for a in armed_ids}

        def on_record(arrival: float, record: ConsumerRecord[Any, Any]) -> None:
            if record.topic == CALLS:  # the crossing call itself reaching a bare consumer: the transport floor
                if record.key in armed_keys:
                    cause = intended.get(json.loads(record.value)["message_id"])
                    if cause is not None:
                        transport.append(arrival - (start_box[0] + cause[0]))
                return
            body = json.loads(record.value)
            if body.get("type") != "CallingCreditThresholdReached":
                return
            cause = intended.get(body.get("causation_id"))
            if cause is not None:
                latencies.append(arrival - (start_box[0] + cause[0]))
                by_threshold[cause[1]] += 1

        reader = Reader(stack, ["metering.alerts", TopicPartition(CALLS, 0)], on_record)
        await reader.start()
        latency_producer = producer(stack, linger_ms=0)  # the open loop batches every GENERATOR_LINGER_S
        await latency_producer.start()
        try:
            async with Admin(stack) as admin:
                sending = asyncio.create_task(
                    open_loop(latency_producer, items, start_box, batch_every=GENERATOR_LINGER_S)
                )
                if warming:  # a broker started minutes ago is still compiling its produce path (JIT)
                    with sampler.phase("(d) warm-up, not counted"):
                        await asyncio.sleep(0)  # the sender sets its start before its first await
                        assert start_box[0], "the open loop did not start"
                        await asyncio.sleep(max(0.0, start_box[0] + warmup - now()))
                backlog = BacklogMonitor(admin, GROUP, [CALLS])
                backlog.start()
                probe = CommitProbe(stack, "usage_metering")
                await probe.start()
                with sampler.phase("(d) open-loop calls"):
                    sent = await sending
                    sent_done = now()
                    await wait_for(lambda: len(latencies) >= armed, 60.0, "(d) the crossing alerts", interval=0.05)
                await probe.stop()
                await backlog.stop()
                ends_after = await admin.ends([CALLS])

                async def caught_up() -> bool:
                    committed = await admin.committed(GROUP, list(ends_after))
                    return all(committed[tp] >= end for tp, end in ends_after.items())

                await wait_for(caught_up, timeout, "(d) the worker to commit the phase's calls", interval=0.1)
            drained = now() - sent_done
        finally:
            await latency_producer.stop()
            await reader.stop()
    finally:
        await kafka.stop()
    lag = sorted(sent.send_lag[warming:])
    say(
        f"   sender: {sent.sent:,} calls in {sent.duration:.1f} s ({sent.sent / sent.duration:,.0f}/s"
        f"{', warm-up included' if warming else ''}), errors {sent.errors}; measured part: sender lag p99 "
        f"{1000 * percentile(lag, 99):.1f} ms, max {1000 * lag[-1]:.1f} ms"
    )
    say(f"   worker backlog on {CALLS} in the measured part (sampled every 0.2 s): {backlog.summary()}")
    say(f"   worker committed the last call {drained:.2f} s after the last send")
    say(f"   transport floor (crossing call intended send -> a bare consumer has it): {latency_line(transport)}")
    say(f"   alert latency (crossing call intended send -> alert arrival): {latency_line(latencies)}")
    say(f"   disk: a one-record commit (a WAL flush) every 0.1 s took {probe.summary()}")
    say(f"   alerts by threshold: {dict(sorted(by_threshold.items()))} of {armed} crossings")
    return {
        "p99_ms": p99_ms(latencies),
        "transport_p99_ms": p99_ms(transport),
        "received": len(latencies),
        "expected": armed,
        "rate": rate,
    }


async def _count_is(conn: Any, query: str, lo: str, hi: str, expected: int) -> bool:
    return int(await conn.fetchval(query, lo, hi)) >= expected


async def _sum_is(conn: Any, query: str, lo: str, hi: str, expected: Decimal) -> bool:
    return Decimal(await conn.fetchval(query, lo, hi)) >= expected


# ---------------------------------------------------------------------------------------------- main


async def main() -> int:
    global REPLICAS
    args = parse_args()
    REPLICAS = args.replicas
    stack = stack_from(args)
    prefix = run_prefix("um")
    banner(
        "usage metering benchmark",
        stack,
        events=args.events,
        accounts=args.accounts,
        replicas=args.replicas,
        dup_rate=args.dup_rate,
        run=prefix,
    )
    await provision(stack)
    workers = Workers(stack, prefix)
    sampler = CpuSampler(stack, workers)
    rng = random.Random(args.seed)
    try:
        # 0. Accounts first, recorded by the worker; then the worker stops.
        ids = [f"{prefix}-{i:05d}" for i in range(args.accounts)]
        check_contract(AccountOpened, account_opened_json(new_id(), ids[0], OPENED_AT))
        await start_metering(workers)
        kafka = producer(stack)
        await kafka.start()
        try:
            await produce_batched(
                kafka,
                PLATFORM_ACCOUNTS.name,
                PLATFORM_ACCOUNTS.partitions,
                ((a.encode(), account_opened_json(new_id(), a, OPENED_AT)) for a in ids),
            )
            lo, hi = prefix_bounds(prefix)
            conn = await connect(stack, "usage_metering")
            try:
                took = await wait_for(
                    lambda: _count_is(
                        conn, "select count(*) from accounts where account_id between $1 and $2", lo, hi, len(ids)
                    ),
                    args.timeout,
                    "the worker to record the accounts",
                )
            finally:
                await conn.close()
            say(f"0. {len(ids):,} accounts opened and recorded by the worker in {took:.1f} s")
            stop_metering(workers)

            # 1. Fill usage.calls while no worker runs.
            started = now()
            fill = make_fill(prefix, args.accounts, args.events, args.dup_rate, rng)
            check_contract(CallCharged, fill.records[0][1])
            generated = now() - started
            starts = await end_offsets(stack, [CALLS])
            started = now()
            await produce_batched(kafka, CALLS, USAGE_CALLS.partitions, fill.records)
            produced = now() - started
            ends = await end_offsets(stack, [CALLS])
        finally:
            await kafka.stop()
        in_range = sum(ends[tp] - starts[tp] for tp in ends)
        size = sum(len(v) for _, v in fill.records) / len(fill.records)
        say(
            f"1. filled {CALLS}: {args.events:,} events ({fill.unique:,} calls + {fill.duplicates:,} duplicate reports, "
            f"~{size:.0f} B each), generated in {generated:.1f} s, produced in {produced:.1f} s "
            f"({args.events / produced:,.0f}/s); {in_range:,} records in the range"
        )
        if in_range != args.events:
            raise RuntimeError(f"expected {args.events} records in the range, found {in_range}")

        # (a) raw limits.
        with sampler.phase("(a) raw consumer"), garbage_collected_like_a_worker():
            raw_n, raw_s = await raw_consumer_rate(stack, starts, ends, args.timeout)
        raw_rate = raw_n / raw_s
        say(f"(a) raw consumer (getmany + json.loads): {raw_n:,} in {raw_s:.2f} s = {raw_rate:,.0f} events/s")
        with sampler.phase("(a) raw asyncpg insert"):
            db_n, db_s = await raw_insert_rate(stack, fill)
        db_rate = len(fill.raw_accounts) / db_s
        say(
            f"(a) raw asyncpg set-based insert (5,000-row unnest, on conflict, returning): {len(fill.raw_accounts):,} rows "
            f"({db_n:,} new) in {db_s:.2f} s = {db_rate:,.0f} rows/s"
        )
        floors = {}
        for contract, what in ((False, "json.loads"), (True, "the contract's validation")):
            with sampler.phase(f"(a) floor pipeline with {what}, {REPLICAS} processes"):
                floor_n, floor_s, floor_cpu = await floor_rate(stack, starts, ends, REPLICAS, contract, args.timeout)
            floors[contract] = floor_n / floor_s
            say(
                f"(a) floor pipeline ({REPLICAS} bare processes: getmany + {what} + metering's deduplicating insert, "
                f"nothing else): {floor_n:,} in {floor_s:.2f} s = {floors[contract]:,.0f} events/s = "
                f"{100 * floors[contract] / raw_rate:.1f} % of the raw consumer; their own CPU "
                f"{1e6 * floor_cpu / floor_n:.1f} µs an event"
            )
        expected_total = Decimal(fill.total_micros) / 1_000_000
        unique = fill.unique
        del fill  # ~1 GB of Python objects: free them before the worker runs (and before the GC-quiet phases)
        gc.collect()

        # (b) the worker, from the start of the range to the end.
        await reset_calls_offsets(stack, starts)
        first, cpu_b = await drain(stack, workers, sampler, starts, ends, args.timeout, "(b)")
        meters, billable, over_cap, calls = await accrual(stack, prefix)
        say(
            f"(b) worker: {first.describe()}; "
            f"{100 * first.rate / raw_rate:.1f} % of the raw consumer, {100 * first.rate / db_rate:.1f} % of the raw insert, "
            f"{100 * first.rate / floors[True]:.1f} % of the floor pipeline with the contract's validation"
        )
        ok_sum = billable + over_cap == expected_total and calls == unique
        say(
            f"    accrual: {meters:,} meters, billable {billable}, over_cap {over_cap}, calls {calls:,}; "
            f"expected billable+over_cap {expected_total} and {unique:,} calls: {'OK' if ok_sum else 'MISMATCH'}"
        )

        # (c) replay the same range.
        replay: Drain | None = None
        if not args.skip_replay:
            stop_metering(workers)
            await reset_calls_offsets(stack, starts)
            replay, _ = await drain(stack, workers, sampler, starts, ends, args.timeout, "(c) replay")
            again = await accrual(stack, prefix)
            same = again == (meters, billable, over_cap, calls)
            say(
                f"(c) replay of all {replay.events:,}: {replay.describe()}; "
                f"accrual after: {again[0]:,} meters, billable {again[1]}, over_cap {again[2]}, calls {again[3]:,}: "
                f"{'UNCHANGED' if same else 'CHANGED'}"
            )
            ok_sum = ok_sum and same

        # (d) alert latency at half the sustained rate.
        alerts: dict[str, Any] | None = None
        if not args.skip_alerts:
            rate = args.alert_rate or (max(100, int(first.rate / 2)) if first.measured else FALLBACK_ALERT_RATE)
            if not args.alert_rate and not first.measured:
                say(
                    f"   most of (b) was committed before the group was formed: (d) runs at {FALLBACK_ALERT_RATE:,}/s (more --events to derive it)"
                )
            alerts = await alert_latency(
                stack,
                workers,
                sampler,
                prefix,
                rate,
                args.alert_seconds,
                args.alert_warmup,
                args.crossings,
                args.timeout,
                rng,
            )
        workers.stop_all()

        say("\n== summary")
        if not first.measured:
            say(
                f"   sustained rate NOT MEASURED: {first.events - first.timed_events:,} of {first.events:,} events were "
                "committed before the group was formed (use more --events)"
            )
        else:
            say(f"   sustained {first.rate:,.0f} events/s (target >= 25,000): {verdict(first.rate >= 25_000)}")
            say(
                f"   {100 * first.rate / raw_rate:.1f} % of the raw consumer rate {raw_rate:,.0f}/s (target >= 40 %): "
                f"{verdict(first.rate >= 0.4 * raw_rate)}"
            )
        if replay is not None:
            replay_rate = f"{replay.rate:,.0f} events/s" if replay.measured else "rate NOT MEASURED (use more --events)"
            say(f"   replay {replay_rate}, accrual unchanged: {verdict(ok_sum)}")
        if alerts is not None:
            say(
                f"   alert p99 {alerts['p99_ms']:.1f} ms at {alerts['rate']:,}/s, {alerts['received']}/{alerts['expected']} "
                f"alerts (target <= 100 ms): {verdict(alerts['p99_ms'] <= 100 and alerts['received'] == alerts['expected'])}"
            )
        say(f"   worker CPU during (b): {replicas_cpu(cpu_b, SERVICE):.0f} % of a core, {REPLICAS} replica(s)")
        return 0 if ok_sum else 1
    finally:
        workers.stop_all()


if __name__ == "__main__":
    run_main(main)
