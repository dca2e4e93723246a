"""Usage metering benchmark: a million charged calls, the raw limits, a replay, and alert latency.

1. Opens ``--accounts`` accounts (the metering worker records them), stops the worker, then
   fills ``usage.calls`` with ``--events`` realistic ``CallCharged`` (costs 0.01-3.00 USD with
   6 decimals, ~1 % duplicate reports), pre-serialised and sent in batches.
2. (a) raw limits, same run: a bare aiokafka consumer (``getmany`` + ``json.loads``, nothing else)
   reading exactly that range, and a bare asyncpg set-based insert of the same rows; then the
   floor pipelines: as many bare processes as replicas, reading the range and recording the calls,
   nothing else (bench/floor_pipeline.py): with metering's own deduplicating insert, once with
   ``json.loads`` and once validating each call against the contract's model; and with
   ``json.loads`` and a binary ``COPY`` into the same keyed table (repeats dropped in memory), the
   cheapest durable write of the calls any design needs. What they reach is the most an
   implementation of the service could reach with each way of writing the ledger here.
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
   Then the durable floor: the worker stopped, as many bare processes as replicas read
   ``usage.calls`` as its calls consumer does, write each batch by binary ``COPY`` and commit it
   (bench/floor_pipeline.py, ``live``), under the same open loop: from a crossing call's intended
   send to its batch's commit is what any design that commits the calls before it alerts needs.

(b) and (d) also print PostgreSQL's execution time an event by statement (``StatementTimes``).

Targets: >= 25,000 events/s, >= 40 % of the raw consumer rate, alert p99 <= 100 ms.
Run ``python -m bench.bench_usage_metering --help``; docs/benchmarks.md has the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from bench import floor_pipeline
from bench.common import (
    SERVICE_GROUPS,
    Admin,
    BacklogMonitor,
    Bench,
    CommitProbe,
    KeyPartitioner,
    OpenLoopResult,
    Reader,
    Stack,
    StatementTimes,
    Workers,
    account_opened_json,
    add_stack_arguments,
    begin,
    call_json,
    check_contract,
    connect,
    count_between,
    end_offsets,
    latency_line,
    micro_cost,
    money_text,
    new_id,
    now,
    open_loop,
    p99_ms,
    percentile,
    prefix_bounds,
    produce_accounts_opened,
    produce_batched,
    producer,
    raw_consumer_rate,
    replica_names,
    replicas_cpu,
    run_main,
    say,
    set_group_offsets,
    verdict,
    wait_for,
)
from contracts.messages import AccountOpened, CallCharged
from contracts.topics import USAGE_CALLS
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
    parser.add_argument("--skip-alert-floor", action="store_true", help="skip (d)'s durable floor")
    parser.add_argument(
        "--floor-linger-ms", type=int, help="how long (d)'s durable floor lets a fetch wait (default: the worker's)"
    )
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


async def empty_floor_table(stack: Stack) -> None:
    """The floor pipelines' table, made if need be, empty (in ``bench_raw``, made by raw_insert_rate)."""
    conn = await connect(stack, "bench_raw")
    try:
        await conn.execute(floor_pipeline.CREATE_TABLE)
        await conn.execute(f"truncate {floor_pipeline.TABLE}")
    finally:
        await conn.close()


async def floor_rate(
    stack: Stack,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    processes: int,
    mode: str,
    timeout: float,
) -> tuple[int, float, float]:
    """(records, seconds, process CPU seconds) for ``processes`` bare processes reading the range
    and recording the calls, nothing else (bench/floor_pipeline.py; ``mode``: ``json`` or
    ``contract`` with metering's deduplicating insert, ``copy`` by binary ``COPY``)."""
    await empty_floor_table(stack)
    partitions = sorted(ends, key=lambda tp: tp.partition)
    children = []
    for share in range(processes):
        ranges = {tp.partition: (starts[tp], ends[tp]) for tp in partitions[share::processes]}
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.floor_pipeline",
                stack.bootstrap,
                CALLS,
                json.dumps(ranges),
                mode,
                stdout=asyncio.subprocess.PIPE,
                # The DSN holds the stack's password: in the environment, not on the command line (ps).
                env={**os.environ, floor_pipeline.DSN_VARIABLE: stack.dsn("bench_raw")},
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


# ------------------------------------------------------------------------------ the worker's replicas


async def start_metering(workers: Workers, replicas: int) -> None:
    """Start the usage-metering replicas (one consumer group); returns when all are ready."""
    await workers.start_ready_together([(SERVICE, name) for name in replica_names(SERVICE, replicas)])


def stop_metering(workers: Workers, replicas: int) -> None:
    for name in replica_names(SERVICE, replicas):
        workers.stop(name)


def group_members(replicas: int) -> int:
    """Consumers the replicas put in the group (the workers read the same BILLING_* environment)."""
    settings = MeteringSettings()
    return replicas * (settings.calls_consumers + settings.consumers_per_subscription)


async def drain(
    bench: Bench,
    replicas: int,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    timeout: float,
    label: str,
) -> tuple[Drain, dict[str, tuple[float, float]]]:
    """Start the workers and sample the group until it committed ``ends`` on usage.calls (``Drain``
    times the rate from the first sample at which the whole group was formed)."""
    total = sum(ends[tp] - starts[tp] for tp in ends)
    spawned = now()
    await start_metering(bench.workers, replicas)
    samples: list[tuple[float, int, bool]] = []
    members = group_members(replicas)
    async with Admin(bench.stack) as admin:

        async def done() -> bool:
            bench.workers.check_alive()
            state, joined = await admin.state(GROUP)
            committed = await admin.committed(GROUP, list(ends))
            progress = sum(min(max(committed[tp], starts[tp]), ends[tp]) - starts[tp] for tp in ends)
            formed = (state == "Stable" and joined == members) or bool(samples and samples[-1][2])
            samples.append((now(), progress, formed))
            return progress >= total

        def progress() -> str:
            return f"{samples[-1][1]:,}/{total:,} committed" if samples else "starting"

        with bench.sampler.phase(f"{label} worker") as cpu:
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


# ------------------------------------------------------------------------------------------ set-up


async def open_accounts(bench: Bench, args: argparse.Namespace, kafka: AIOKafkaProducer) -> None:
    """0. The accounts first, recorded by the worker; then the worker stops."""
    ids = [f"{bench.prefix}-{i:05d}" for i in range(args.accounts)]
    check_contract(AccountOpened, account_opened_json(new_id(), ids[0], OPENED_AT))
    await start_metering(bench.workers, args.replicas)
    await produce_accounts_opened(kafka, ids, OPENED_AT)
    lo, hi = prefix_bounds(bench.prefix)
    conn = await connect(bench.stack, "usage_metering")
    try:
        took = await wait_for(
            lambda: _count_is(conn, "accounts", lo, hi, len(ids)), args.timeout, "the worker to record the accounts"
        )
    finally:
        await conn.close()
    say(f"0. {len(ids):,} accounts opened and recorded by the worker in {took:.1f} s")
    stop_metering(bench.workers, args.replicas)


Range = dict[TopicPartition, int]


async def fill_calls(
    bench: Bench, args: argparse.Namespace, kafka: AIOKafkaProducer, rng: random.Random
) -> tuple[Fill, Range, Range]:
    """1. ``usage.calls`` filled while no worker runs; returns the calls and the range they occupy."""
    started = now()
    fill = make_fill(bench.prefix, args.accounts, args.events, args.dup_rate, rng)
    check_contract(CallCharged, fill.records[0][1])
    generated = now() - started
    starts = await end_offsets(bench.stack, [CALLS])
    started = now()
    await produce_batched(kafka, CALLS, USAGE_CALLS.partitions, fill.records)
    produced = now() - started
    ends = await end_offsets(bench.stack, [CALLS])
    in_range = sum(ends[tp] - starts[tp] for tp in ends)
    size = sum(len(v) for _, v in fill.records) / len(fill.records)
    say(
        f"1. filled {CALLS}: {args.events:,} events ({fill.unique:,} calls + {fill.duplicates:,} duplicate reports, "
        f"~{size:.0f} B each), generated in {generated:.1f} s, produced in {produced:.1f} s "
        f"({args.events / produced:,.0f}/s); {in_range:,} records in the range"
    )
    if in_range != args.events:
        raise RuntimeError(f"expected {args.events} records in the range, found {in_range}")
    return fill, starts, ends


# -------------------------------------------------------------------------------- (a) the floors


FLOOR_PIPELINES = {  # bench/floor_pipeline.py's modes, and what each does to a batch
    "json": "json.loads + metering's deduplicating insert",
    "contract": "the contract's validation + metering's deduplicating insert",
    "copy": "json.loads + repeats dropped in memory + binary COPY",
}


@dataclass
class Floors:
    raw_consumer: float  # events/s
    raw_insert: float  # rows/s
    pipeline: dict[str, float]  # events/s of the floor pipelines, by mode (bench/floor_pipeline.py)


async def measure_floors(bench: Bench, args: argparse.Namespace, fill: Fill, starts: Range, ends: Range) -> Floors:
    """(a) The raw consumer, the raw insert and the two floor pipelines on the same range."""
    with bench.sampler.phase("(a) raw consumer"), garbage_collected_like_a_worker():
        raw_n, raw_s = await raw_consumer_rate(bench.stack, starts, ends, args.timeout)
    raw_rate = raw_n / raw_s
    say(f"(a) raw consumer (getmany + json.loads): {raw_n:,} in {raw_s:.2f} s = {raw_rate:,.0f} events/s")
    with bench.sampler.phase("(a) raw asyncpg insert"):
        db_n, db_s = await raw_insert_rate(bench.stack, fill)
    db_rate = len(fill.raw_accounts) / db_s
    say(
        f"(a) raw asyncpg set-based insert (5,000-row unnest, on conflict, returning): {len(fill.raw_accounts):,} rows "
        f"({db_n:,} new) in {db_s:.2f} s = {db_rate:,.0f} rows/s"
    )
    floors: dict[str, float] = {}
    replicas = args.replicas
    for mode, what in FLOOR_PIPELINES.items():
        with bench.sampler.phase(f"(a) floor pipeline with {what}, {replicas} processes"):
            floor_n, floor_s, floor_cpu = await floor_rate(bench.stack, starts, ends, replicas, mode, args.timeout)
        floors[mode] = floor_n / floor_s
        say(
            f"(a) floor pipeline ({replicas} bare processes: getmany + {what}, "
            f"nothing else): {floor_n:,} in {floor_s:.2f} s = {floors[mode]:,.0f} events/s = "
            f"{100 * floors[mode] / raw_rate:.1f} % of the raw consumer; their own CPU "
            f"{1e6 * floor_cpu / floor_n:.1f} µs an event"
        )
    return Floors(raw_rate, db_rate, floors)


# --------------------------------------------------------------------- (b) the service, (c) replay

Books = tuple[int, Decimal, Decimal, int]  # meters, billable, over_cap, calls of the run's accounts


async def measure_service(
    bench: Bench, args: argparse.Namespace, starts: Range, ends: Range, floors: Floors, expected: Decimal, unique: int
) -> tuple[Drain, dict[str, tuple[float, float]], Books, bool]:
    """(b) The worker from the start of the range to the end; the accrual checked against the calls."""
    await reset_calls_offsets(bench.stack, starts)
    statements = StatementTimes(bench.stack, "usage_metering")
    await statements.start()
    first, cpu = await drain(bench, args.replicas, starts, ends, args.timeout, "(b)")
    await statements.stop()
    books = await accrual(bench.stack, bench.prefix)
    meters, billable, over_cap, calls = books
    say(
        f"(b) worker: {first.describe()}; "
        f"{100 * first.rate / floors.raw_consumer:.1f} % of the raw consumer, "
        f"{100 * first.rate / floors.raw_insert:.1f} % of the raw insert, "
        f"{100 * first.rate / floors.pipeline['contract']:.1f} % of the floor pipeline with the contract's validation, "
        f"{100 * first.rate / floors.pipeline['copy']:.1f} % of the COPY floor pipeline"
    )
    ok = billable + over_cap == expected and calls == unique
    say(
        f"    accrual: {meters:,} meters, billable {billable}, over_cap {over_cap}, calls {calls:,}; "
        f"expected billable+over_cap {expected} and {unique:,} calls: {'OK' if ok else 'MISMATCH'}"
    )
    say(f"    PostgreSQL's time an event in (b), by statement: {statements.summary(first.events)}")
    return first, cpu, books, ok


async def measure_replay(
    bench: Bench, args: argparse.Namespace, starts: Range, ends: Range, books: Books
) -> tuple[Drain, bool]:
    """(c) The same range again from its start: the accrual must not change."""
    stop_metering(bench.workers, args.replicas)
    await reset_calls_offsets(bench.stack, starts)
    replay, _ = await drain(bench, args.replicas, starts, ends, args.timeout, "(c) replay")
    again = await accrual(bench.stack, bench.prefix)
    same = again == books
    say(
        f"(c) replay of all {replay.events:,}: {replay.describe()}; "
        f"accrual after: {again[0]:,} meters, billable {again[1]}, over_cap {again[2]}, calls {again[3]:,}: "
        f"{'UNCHANGED' if same else 'CHANGED'}"
    )
    return replay, same


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


def alert_rate(args: argparse.Namespace, first: Drain) -> int:
    """--alert-rate, else half of (b)'s rate (a fallback when (b) could not be timed)."""
    rate = args.alert_rate or (max(100, int(first.rate / 2)) if first.measured else FALLBACK_ALERT_RATE)
    if not args.alert_rate and not first.measured:
        say(
            f"   most of (b) was committed before the group was formed: (d) runs at {FALLBACK_ALERT_RATE:,}/s (more --events to derive it)"
        )
    return rate


@dataclass
class AlertPlan:
    rate: int
    seconds: float
    warmup: float
    total: int  # calls in the measured part
    warming: int  # background calls sent first, not counted
    armed_ids: list[str]
    background_ids: list[str]


def plan_alerts(prefix: str, rate: int, seconds: float, warmup: float, crossings: int) -> AlertPlan:
    total = int(rate * seconds)
    warming = int(rate * warmup)
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
    return AlertPlan(rate, seconds, warmup, total, warming, armed_ids, background_ids)


async def open_and_arm(
    bench: Bench, kafka: AIOKafkaProducer, plan: AlertPlan, rng: random.Random, timeout: float
) -> list[int]:
    """(d)'s own accounts opened, and each armed one brought just under its threshold with ordinary
    calls; returns each armed account's level."""
    # (d)'s own accounts only ("-ar..." and "-bg..."; the run's (b) accounts "-00000"... sort before them).
    prefix = bench.prefix
    lo, hi = f"{prefix}-ar", f"{prefix}-bg~"
    ids = plan.armed_ids + plan.background_ids
    await produce_accounts_opened(kafka, ids, OPENED_AT)
    conn = await connect(bench.stack, "usage_metering")
    try:
        await wait_for(
            lambda: _count_is(conn, "accounts", lo, hi, len(ids)), timeout, "(d) the worker to open the fresh accounts"
        )
        levels = [ARMED_LEVELS[i % 3] for i in range(len(plan.armed_ids))]
        arm_records = []
        expected_micros = 0
        for account, level in zip(plan.armed_ids, levels, strict=True):
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
            f"(d) the worker to arm {len(plan.armed_ids)} accounts ({len(arm_records):,} calls)",
        )
    finally:
        await conn.close()
    return levels


Schedule = tuple[list[tuple[float, str, int, bytes, bytes]], dict[str, tuple[float, int]]]


def alert_schedule(plan: AlertPlan, levels: list[int], rng: random.Random) -> Schedule:
    """Slot i at i/rate; after the warm-up, every (total/armed)-th slot is a crossing call. Returns
    the items to send and, per crossing call's message id, its intended time and threshold."""
    armed = len(plan.armed_ids)
    step = plan.total / armed
    crossing_slots = {plan.warming + int(k * step + step / 2): k for k in range(armed)}
    partition_of = KeyPartitioner(USAGE_CALLS.partitions)
    intended: dict[str, tuple[float, int]] = {}
    items: list[tuple[float, str, int, bytes, bytes]] = []
    for i in range(plan.warming + plan.total):
        at = i / plan.rate
        when = "2027-03-03T09:00:00+00:00"
        k = crossing_slots.get(i)
        message_id = new_id()
        if k is not None:
            account = plan.armed_ids[k]
            value = call_json(message_id, account, when, "crossing", money_text(TRIGGER_COST))
            intended[message_id] = (at, THRESHOLD_OF_LEVEL[levels[k]])
        else:
            account = plan.background_ids[rng.randrange(len(plan.background_ids))]
            value = call_json(message_id, account, when, f"bg-{i}", money_text(micro_cost(rng)))
        key = account.encode()
        items.append((at, CALLS, partition_of(key), key, value))
    check_contract(CallCharged, items[0][4])
    return items, intended


@dataclass
class AlertRun:
    latencies: list[float] = field(default_factory=list)
    transport: list[float] = field(default_factory=list)
    relayed: list[float] = field(default_factory=list)  # crossing call intended send -> the alert's CreateTime
    by_threshold: Counter[int] = field(default_factory=Counter)
    sent: OpenLoopResult | None = None
    backlog: BacklogMonitor | None = None
    probe: CommitProbe | None = None
    statements: StatementTimes | None = None
    drained: float = 0.0


def crossing_of(
    record: ConsumerRecord[Any, Any], armed_keys: set[bytes], intended: dict[str, tuple[float, int]]
) -> tuple[float, int] | None:
    """A call record's intended send time and threshold, if it is one of the schedule's crossing calls."""
    if record.key not in armed_keys:
        return None
    return intended.get(json.loads(record.value)["message_id"])


async def run_alert_loop(bench: Bench, plan: AlertPlan, schedule: Schedule, timeout: float) -> AlertRun:
    """Send the schedule open loop (the warm-up first, not counted), with the backlog monitor and the
    commit probe beside the measured part, until every crossing's alert arrived and the worker
    committed every call."""
    items, intended = schedule
    run = AlertRun()
    start_box: list[float] = [0.0]
    wall = time.time() - now()  # a record's CreateTime (epoch ms) on the benchmark's clock
    armed_keys = {a.encode() for a in plan.armed_ids}

    def on_record(arrival: float, record: ConsumerRecord[Any, Any]) -> None:
        if record.topic == CALLS:  # the crossing call itself reaching a bare consumer: the transport floor
            cause = crossing_of(record, armed_keys, intended)
            if cause is not None:
                run.transport.append(arrival - (start_box[0] + cause[0]))
            return
        body = json.loads(record.value)
        if body.get("type") != "CallingCreditThresholdReached":
            return
        cause = intended.get(body.get("causation_id"))
        if cause is not None:
            run.latencies.append(arrival - (start_box[0] + cause[0]))
            run.relayed.append(record.timestamp / 1000 - wall - (start_box[0] + cause[0]))
            run.by_threshold[cause[1]] += 1

    armed = len(plan.armed_ids)
    reader = Reader(bench.stack, ["metering.alerts", TopicPartition(CALLS, 0)], on_record)
    await reader.start()
    latency_producer = producer(bench.stack, linger_ms=0)  # the open loop batches every GENERATOR_LINGER_S
    await latency_producer.start()
    run.statements = StatementTimes(bench.stack, "usage_metering")
    await run.statements.start()
    try:
        async with Admin(bench.stack) as admin:
            sending = asyncio.create_task(open_loop(latency_producer, items, start_box, batch_every=GENERATOR_LINGER_S))
            if plan.warming:  # a broker started minutes ago is still compiling its produce path (JIT)
                with bench.sampler.phase("(d) warm-up, not counted"):
                    await asyncio.sleep(0)  # the sender sets its start before its first await
                    assert start_box[0], "the open loop did not start"
                    await asyncio.sleep(max(0.0, start_box[0] + plan.warmup - now()))
            run.backlog = BacklogMonitor(admin, GROUP, [CALLS])
            run.backlog.start()
            run.probe = CommitProbe(bench.stack, "usage_metering")
            await run.probe.start()
            with bench.sampler.phase("(d) open-loop calls"):
                run.sent = await sending
                sent_done = now()
                await wait_for(lambda: len(run.latencies) >= armed, 60.0, "(d) the crossing alerts", interval=0.05)
            await run.probe.stop()
            await run.backlog.stop()
            ends_after = await admin.ends([CALLS])

            async def caught_up() -> bool:
                committed = await admin.committed(GROUP, list(ends_after))
                return all(committed[tp] >= end for tp, end in ends_after.items())

            await wait_for(caught_up, timeout, "(d) the worker to commit the phase's calls", interval=0.1)
        run.drained = now() - sent_done
        await run.statements.stop()
    finally:
        await latency_producer.stop()
        await reader.stop()
    return run


def report_alerts(plan: AlertPlan, run: AlertRun) -> dict[str, Any]:
    assert run.sent is not None and run.backlog is not None and run.probe is not None
    armed = len(plan.armed_ids)
    lag = sorted(run.sent.send_lag[plan.warming :])
    say(
        f"   sender: {run.sent.sent:,} calls in {run.sent.duration:.1f} s ({run.sent.sent / run.sent.duration:,.0f}/s"
        f"{', warm-up included' if plan.warming else ''}), errors {run.sent.errors}; measured part: sender lag p99 "
        f"{1000 * percentile(lag, 99):.1f} ms, max {1000 * lag[-1]:.1f} ms"
    )
    say(f"   worker backlog on {CALLS} in the measured part (sampled every 0.2 s): {run.backlog.summary()}")
    say(f"   worker committed the last call {run.drained:.2f} s after the last send")
    say(f"   transport floor (crossing call intended send -> a bare consumer has it): {latency_line(run.transport)}")
    say(f"   alert latency (crossing call intended send -> alert arrival): {latency_line(run.latencies)}")
    say(f"     of which to the alert's send (its CreateTime, set by the sending producer): {latency_line(run.relayed)}")
    say(f"   disk: a one-record commit (a WAL flush) every 0.1 s took {run.probe.summary()}")
    if run.statements is not None:
        say(f"   PostgreSQL's time a call, warm-up included, by statement: {run.statements.summary(run.sent.sent)}")
    say(f"   alerts by threshold: {dict(sorted(run.by_threshold.items()))} of {armed} crossings")
    return {
        "p99_ms": p99_ms(run.latencies),
        "transport_p99_ms": p99_ms(run.transport),
        "received": len(run.latencies),
        "expected": armed,
        "rate": plan.rate,
    }


async def measure_alerts(bench: Bench, args: argparse.Namespace, rate: int, rng: random.Random) -> dict[str, Any]:
    """(d) Open-loop alert latency at ``rate``: fresh accounts, the armed ones brought to their
    thresholds, then the schedule; then, the worker stopped, the durable floor at the same rate."""
    plan = plan_alerts(bench.prefix, rate, args.alert_seconds, args.alert_warmup, args.crossings)
    kafka = producer(bench.stack)
    await kafka.start()
    try:
        levels = await open_and_arm(bench, kafka, plan, rng, args.timeout)
        schedule = alert_schedule(plan, levels, rng)
        run = await run_alert_loop(bench, plan, schedule, args.timeout)
    finally:
        await kafka.stop()
    report = report_alerts(plan, run)
    if not args.skip_alert_floor:
        stop_metering(bench.workers, args.replicas)
        linger_ms = args.floor_linger_ms or MeteringSettings().calls_linger_ms
        floor = await alert_floor(bench, plan, alert_schedule(plan, levels, rng), args.replicas, linger_ms)
        report["floor_p99_ms"] = p99_ms(floor)
    return report


async def alert_floor(bench: Bench, plan: AlertPlan, schedule: Schedule, processes: int, linger_ms: int) -> list[float]:
    """(d)'s durable floor: the same open loop with the service stopped and, in its place, as many
    bare processes as replicas reading ``usage.calls`` as its calls consumer does, each batch
    written by ``COPY`` and committed, nothing else (bench/floor_pipeline.py, ``live``). What the
    cheapest durable pipeline takes at this rate on this machine, from a crossing call's intended
    send to the commit of its batch; the service's alert also needs its relay and the broker after."""
    items, intended = schedule
    await empty_floor_table(bench.stack)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.floor_pipeline",
            bench.stack.bootstrap,
            CALLS,
            json.dumps(list(range(share, USAGE_CALLS.partitions, processes))),
            "live",
            str(MeteringSettings().calls_fetch_min_bytes),
            str(linger_ms),
            "crossing",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, floor_pipeline.DSN_VARIABLE: bench.stack.dsn("bench_raw")},
        )
        for share in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError("a floor pipeline process did not start (its error is above)")
        start_box: list[float] = [0.0]
        transport: list[float] = []
        armed_keys = {a.encode() for a in plan.armed_ids}

        def on_record(arrival: float, record: ConsumerRecord[Any, Any]) -> None:
            cause = crossing_of(record, armed_keys, intended)  # the same reader as in the service's run
            if cause is not None:
                transport.append(arrival - (start_box[0] + cause[0]))

        reader = Reader(bench.stack, [TopicPartition(CALLS, 0)], on_record)
        await reader.start()
        sender = producer(bench.stack, linger_ms=0)
        await sender.start()
        probe = CommitProbe(bench.stack, "bench_raw")
        try:
            sending = asyncio.create_task(open_loop(sender, items, start_box, batch_every=GENERATOR_LINGER_S))
            await asyncio.sleep(0)  # the sender sets its start before its first await
            await asyncio.sleep(max(0.0, start_box[0] + plan.warmup - now()))
            with bench.sampler.phase(f"(d) durable floor, {processes} bare processes"):
                await probe.start()
                await sending
                await probe.stop()
            await asyncio.sleep(1.0)  # the last batches committed
        finally:
            await sender.stop()
            await reader.stop()
        outputs = []
        for child in children:
            out, _ = await asyncio.wait_for(child.communicate(b"stop\n"), 60)
            outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
    wall = time.time() - now()  # a commit's wall-clock time on the benchmark's clock
    committed = {k: v for out in outputs for k, v in out["committed"].items()}
    floor = [committed[m] - wall - (start_box[0] + at) for m, (at, _) in intended.items() if m in committed]
    records = sum(out["records"] for out in outputs)
    cpu = sum(out["cpu"] for out in outputs)
    say(
        f"   durable floor ({processes} bare processes in the worker's place: getmany as it fetches + json.loads + "
        f"binary COPY + commit, fetches waiting up to {linger_ms} ms; {records:,} calls, their own CPU "
        f"{1e6 * cpu / max(records, 1):.1f} µs a call): "
        f"crossing call intended send -> its batch committed: {latency_line(floor)}; "
        f"{len(floor)}/{len(intended)} committed"
    )
    say(f"     transport floor in that run: {latency_line(transport)}")
    say(f"     disk in that run: a one-record commit (a WAL flush) every 0.1 s took {probe.summary()}")
    return floor


async def _count_is(conn: Any, table: str, lo: str, hi: str, expected: int) -> bool:
    return await count_between(conn, table, lo, hi) >= expected


async def _sum_is(conn: Any, query: str, lo: str, hi: str, expected: Decimal) -> bool:
    return Decimal(await conn.fetchval(query, lo, hi)) >= expected


# --------------------------------------------------------------------------------------- the summary


def report_summary(
    args: argparse.Namespace,
    floors: Floors,
    first: Drain,
    cpu_b: dict[str, tuple[float, float]],
    replay: Drain | None,
    alerts: dict[str, Any] | None,
    ok: bool,
) -> None:
    raw_rate = floors.raw_consumer
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
        copy_rate = floors.pipeline["copy"]
        say(f"   {100 * first.rate / copy_rate:.1f} % of the COPY floor pipeline {copy_rate:,.0f}/s (no target)")
    if replay is not None:
        replay_rate = f"{replay.rate:,.0f} events/s" if replay.measured else "rate NOT MEASURED (use more --events)"
        say(f"   replay {replay_rate}, accrual unchanged: {verdict(ok)}")
    if alerts is not None:
        say(
            f"   alert p99 {alerts['p99_ms']:.1f} ms at {alerts['rate']:,}/s, {alerts['received']}/{alerts['expected']} "
            f"alerts (target <= 100 ms): {verdict(alerts['p99_ms'] <= 100 and alerts['received'] == alerts['expected'])}"
        )
        floor = f"; durable floor p99 {alerts['floor_p99_ms']:.1f} ms" if "floor_p99_ms" in alerts else ""
        say(f"   transport floor p99 {alerts['transport_p99_ms']:.1f} ms{floor} (no target)")
    say(f"   worker CPU during (b): {replicas_cpu(cpu_b, SERVICE):.0f} % of a core, {args.replicas} replica(s)")
    if first.measured:
        say(f"   CPU an event during (b): {cpu_an_event(cpu_b, first.rate)}")


def cpu_an_event(cpu: dict[str, tuple[float, float]], rate: float) -> str:
    """The workers', PostgreSQL's and the broker's CPU an event: each one's average share of a
    core during a phase over the phase's rate."""
    shares = {
        "workers": replicas_cpu(cpu, SERVICE),
        "PostgreSQL": cpu.get("postgres", (0.0, 0.0))[0],
        "the broker": cpu.get("kafka", (0.0, 0.0))[0],
    }
    return ", ".join(f"{name} {1e4 * share / rate:.1f} µs" for name, share in shares.items())


# ---------------------------------------------------------------------------------------------- main


async def main() -> int:
    args = parse_args()
    bench = await begin(
        args,
        "um",
        "usage metering benchmark",
        events=args.events,
        accounts=args.accounts,
        replicas=args.replicas,
        dup_rate=args.dup_rate,
    )
    rng = random.Random(args.seed)
    try:
        kafka = producer(bench.stack)
        await kafka.start()
        try:
            await open_accounts(bench, args, kafka)
            fill, starts, ends = await fill_calls(bench, args, kafka, rng)
        finally:
            await kafka.stop()
        floors = await measure_floors(bench, args, fill, starts, ends)
        expected, unique = Decimal(fill.total_micros) / 1_000_000, fill.unique
        del fill  # ~1 GB of Python objects: free them before the worker runs (and before the GC-quiet phases)
        gc.collect()

        first, cpu_b, books, ok = await measure_service(bench, args, starts, ends, floors, expected, unique)
        replay: Drain | None = None
        if not args.skip_replay:
            replay, same = await measure_replay(bench, args, starts, ends, books)
            ok = ok and same
        alerts: dict[str, Any] | None = None
        if not args.skip_alerts:
            alerts = await measure_alerts(bench, args, alert_rate(args, first), rng)
        bench.workers.stop_all()

        report_summary(args, floors, first, cpu_b, replay, alerts, ok)
        return 0 if ok else 1
    finally:
        bench.workers.stop_all()


if __name__ == "__main__":
    run_main(main)
