"""License orders benchmark: sustained commands/s (closed loop) and open-loop latency at a fixed rate.

1. Starts the license-orders worker, lets it catch up with what is already on its topics, opens
   ``--accounts`` accounts (business dates in March 2027, billing day 1) and buys each
   ``--licenses`` user licenses.
2. Closed loop: ``--commands`` valid commands (PurchaseLicenses / AssignLicense /
   UnassignLicense / PreviewLicensePurchase; the script tracks each account's balance so every
   command is valid) sent as fast as possible; time from the first send until every result
   event arrived on ``licensing.events``. Raw baseline in the same run: a bare consumer reading
   and JSON-decoding the same command range.
3. Open loop: ``--rate`` commands/s for ``--warmup`` + ``--seconds``; every command has an
   intended send time; latency = result event arrival - intended send time, split at the result record's timestamp
   (when the relay sent it). The transport floor in the same run is the command reaching a bare
   consumer of ``licensing.commands`` (partition 0: a sixth of the commands, a sample).
   The first ``--warmup`` seconds are reported on their own line and not counted: a broker
   started a minute ago still spends 10-37 % of a core compiling (its JIT), which a broker that
   has run for a day does not (docs/benchmarks.md).

Targets: >= 1,000 commands/s sustained; p99 <= 50 ms at 200 commands/s.
Run ``python -m bench.bench_license_orders --help``; docs/benchmarks.md has the commands.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from bench.common import (
    SERVICE_GROUPS,
    SERVICE_INPUTS,
    Admin,
    Bench,
    CommitProbe,
    KeyPartitioner,
    OpenLoopResult,
    Reader,
    account_opened_json,
    add_stack_arguments,
    begin,
    check_contract,
    command_headers,
    connect,
    count_between,
    latency_line,
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
    verdict,
    wait_for,
)
from contracts import Actor
from contracts import messages as m
from contracts.topics import LICENSING_COMMANDS, LICENSING_EVENTS

SERVICE = "license_orders"
GROUP = SERVICE_GROUPS[SERVICE]
COMMANDS = LICENSING_COMMANDS.name
EVENTS = LICENSING_EVENTS.name
OPENED_AT = "2027-03-01T00:00:00+00:00"
ADMIN = Actor(id="admin@bench", role="office_admin")
PROVISIONING = Actor(id="provisioning", role="service")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_license_orders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--accounts", type=int, help="accounts (default 1,000; --quick 100)")
    parser.add_argument("--licenses", type=int, default=20, help="user licenses each account buys first (default 20)")
    parser.add_argument("--commands", type=int, help="closed-loop commands (default 20,000; --quick 2,000)")
    parser.add_argument("--rate", type=int, default=200, help="open-loop commands/s (default 200)")
    parser.add_argument("--seconds", type=float, help="open-loop duration measured (default 20 s; --quick 5 s)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="open-loop seconds before those, at the same rate, reported apart (default 20 s; --quick 0)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="license-orders processes in the consumer group (default 1; licensing.commands has 6 partitions)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on each waiting phase, seconds")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 accounts, 2,000 commands, 5 s open loop")
    add_stack_arguments(parser)
    args = parser.parse_args()
    full, quick = (1_000, 20_000, 20.0, 20.0), (100, 2_000, 5.0, 0.0)
    for name, default in zip(("accounts", "commands", "seconds", "warmup"), quick if args.quick else full, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.warmup < 0 or args.seconds <= 0:
        parser.error("--warmup must be >= 0 and --seconds > 0")
    return args


@dataclass
class AccountState:
    """What the script knows of an account's user licenses, so every command it sends is valid."""

    purchased: int = 0
    assigned: list[str] = field(default_factory=list)
    next_assignee: int = 0


@dataclass
class Mix:
    """Builds valid commands in a fixed mix: ~35 % assign, ~25 % unassign, ~25 % preview, ~15 % purchase."""

    accounts: list[str]
    rng: random.Random
    states: dict[str, AccountState] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def purchase(self, account: str, quantity: int, day: int = 2) -> m.PurchaseLicenses:
        self.states.setdefault(account, AccountState()).purchased += quantity
        return m.PurchaseLicenses(
            message_id=uuid.uuid4(),
            account_id=account,
            occurred_at=_at(day),
            actor=ADMIN,
            product="user",
            quantity=quantity,
        )

    def next(self) -> m.Command:
        account = self.accounts[self.rng.randrange(len(self.accounts))]
        state = self.states.setdefault(account, AccountState())
        day = 2 + self.rng.randrange(26)
        r = self.rng.random()
        available = state.purchased - len(state.assigned)
        command: m.Command
        if r < 0.60 and (r >= 0.35 and state.assigned):
            assignee = state.assigned.pop(self.rng.randrange(len(state.assigned)))
            command = m.UnassignLicense(
                message_id=uuid.uuid4(),
                account_id=account,
                occurred_at=_at(day),
                actor=PROVISIONING,
                product="user",
                assignee_id=assignee,
            )
        elif r < 0.60 and available > 0:
            assignee = f"user-{state.next_assignee}"
            state.next_assignee += 1
            state.assigned.append(assignee)
            command = m.AssignLicense(
                message_id=uuid.uuid4(),
                account_id=account,
                occurred_at=_at(day),
                actor=PROVISIONING,
                product="user",
                assignee_id=assignee,
            )
        elif r < 0.85:
            command = m.PreviewLicensePurchase(
                message_id=uuid.uuid4(),
                account_id=account,
                occurred_at=_at(day),
                actor=ADMIN,
                product="user",
                quantity=1 + self.rng.randrange(5),
            )
        else:
            command = self.purchase(account, 1 + self.rng.randrange(3), day)
        self.counts[command.type] += 1
        return command


def _at(day: int) -> datetime:
    """Noon UTC on a day of March 2027 (the accounts' open cycle)."""
    return datetime(2027, 3, day, 12, 0, tzinfo=UTC)


class Results:
    """Result events on licensing.events by causation id (the command's message_id), with arrival times."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.created_ms: dict[str, int] = {}  # the result record's Kafka timestamp (the relay's send)
        self.types: Counter[str] = Counter()
        self.rejections: list[dict[str, Any]] = []
        self.commands_seen: dict[str, float] = {}
        self.watch_commands = False

    def on_record(self, arrival: float, record: ConsumerRecord[Any, Any]) -> None:
        body = json.loads(record.value)
        if record.topic == COMMANDS:
            if self.watch_commands:
                self.commands_seen[body["message_id"]] = arrival
            return
        cause = body.get("causation_id")
        if cause is None or cause in self.arrived:
            return
        self.arrived[cause] = arrival
        self.created_ms[cause] = record.timestamp
        self.types[body["type"]] += 1
        if body["type"] == "CommandRejected":
            self.rejections.append(body)

    def have_all(self, ids: list[str]) -> bool:
        return all(i in self.arrived for i in ids)

    def missing(self, ids: list[str]) -> int:
        return sum(1 for i in ids if i not in self.arrived)


def encode(commands: Sequence[m.Command]) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """Key, value and signature headers, made before anything is timed."""
    records = [(c.account_id.encode(), c.model_dump_json().encode()) for c in commands]
    return [(key, value, command_headers(COMMANDS, key, value)) for key, value in records]


# ------------------------------------------------------------------------------------------ phases


async def start_worker(bench: Bench, args: argparse.Namespace) -> None:
    """0. The worker's replicas, ready and caught up with what earlier runs left on their topics."""
    await bench.workers.start_ready_together([(SERVICE, name) for name in replica_names(SERVICE, args.replicas)])
    async with Admin(bench.stack) as admin:
        took = await admin.wait_caught_up(GROUP, SERVICE_INPUTS[SERVICE], args.timeout, "catching up")
    say(f"0. worker ready; caught up with earlier runs' records on its topics in {took:.1f} s")


async def open_accounts(
    bench: Bench, args: argparse.Namespace, kafka: AIOKafkaProducer, results: Results, rng: random.Random
) -> Mix:
    """1. The accounts and their first licenses; returns the mix that knows every account's balance."""
    accounts = [f"{bench.prefix}-{i:05d}" for i in range(args.accounts)]
    check_contract(m.AccountOpened, account_opened_json(new_id(), accounts[0], OPENED_AT))
    started = now()
    await produce_accounts_opened(kafka, accounts, OPENED_AT)
    lo, hi = prefix_bounds(bench.prefix)
    conn = await connect(bench.stack, "license_orders")
    try:

        async def opened() -> bool:
            return await count_between(conn, "accounts", lo, hi) >= len(accounts)

        await wait_for(opened, args.timeout, "the worker to open the accounts")
    finally:
        await conn.close()
    mix = Mix(accounts, rng)
    first = [mix.purchase(a, args.licenses) for a in accounts]
    await produce_batched(kafka, COMMANDS, LICENSING_COMMANDS.partitions, encode(first))
    ids = [str(c.message_id) for c in first]
    await wait_for(lambda: results.have_all(ids), args.timeout, "the first purchases' results")
    say(
        f"1. {len(accounts):,} accounts opened and {args.licenses} user licenses bought each in {now() - started:.1f} s"
    )
    return mix


@dataclass
class ClosedLoop:
    rate: float
    cpu: dict[str, tuple[float, float]]


async def closed_loop(
    bench: Bench, args: argparse.Namespace, kafka: AIOKafkaProducer, results: Results, mix: Mix
) -> ClosedLoop:
    """2. ``--commands`` commands as fast as possible, timed until every result arrived; then the
    raw consumer on the same command range."""
    commands = [mix.next() for _ in range(args.commands)]
    payloads = encode(commands)
    ids = [str(c.message_id) for c in commands]
    async with Admin(bench.stack) as admin:
        starts = await admin.ends([COMMANDS])
        with bench.sampler.phase("closed loop") as cpu:
            started = now()
            await produce_batched(kafka, COMMANDS, LICENSING_COMMANDS.partitions, payloads)
            produced = now() - started
            await wait_for(
                lambda: results.have_all(ids),
                args.timeout,
                "the closed loop's results",
                progress=lambda: f"{len(ids) - results.missing(ids):,}/{len(ids):,} results",
            )
            elapsed = now() - started
        ends = await admin.ends([COMMANDS])
    rate = len(ids) / elapsed
    raw_count, raw_seconds = await raw_consumer_rate(bench.stack, starts, ends, timeout=120.0)
    raw_rate = raw_count / raw_seconds
    say(
        f"2. closed loop: {len(ids):,} commands {dict(sorted(mix.counts.items()))} sent in {produced:.2f} s; "
        f"every result in {elapsed:.1f} s = {rate:,.0f} commands/s "
        f"({100 * rate / raw_rate:.2f} % of a bare consumer reading them: {raw_rate:,.0f}/s)"
    )
    return ClosedLoop(rate, cpu)


@dataclass
class OpenLoop:
    """The open loop's schedule and what came of it."""

    commands: list[m.Command]
    intended: dict[str, float]  # message id -> intended send time, seconds after the schedule's start
    start: float  # the schedule's start on the benchmark's clock
    sent: OpenLoopResult
    probe: CommitProbe
    cpu: dict[str, tuple[float, float]]


async def open_loop_at_rate(bench: Bench, args: argparse.Namespace, results: Results, mix: Mix) -> OpenLoop:
    """3. ``--rate`` commands/s for ``--warmup`` + ``--seconds`` on a fixed schedule (open loop),
    with the commit probe beside it."""
    total = int(args.rate * (args.warmup + args.seconds))
    mix.counts.clear()
    commands = [mix.next() for _ in range(total)]
    partition_of = KeyPartitioner(LICENSING_COMMANDS.partitions)
    items: list[tuple[float, str, int, bytes, bytes, list[tuple[str, bytes]]]] = []
    for i, command in enumerate(commands):
        key = command.account_id.encode()
        value = command.model_dump_json().encode()
        items.append((i / args.rate, COMMANDS, partition_of(key), key, value, command_headers(COMMANDS, key, value)))
    intended = {str(c.message_id): i / args.rate for i, c in enumerate(commands)}
    clock = [0.0]
    results.watch_commands = True
    latency_producer = producer(bench.stack, linger_ms=5)
    await latency_producer.start()
    probe = CommitProbe(bench.stack, "license_orders")
    await probe.start()
    try:
        with bench.sampler.phase("open loop, warm-up included") as cpu:
            sent = await open_loop(latency_producer, items, clock)
            open_ids = list(intended)
            await wait_for(lambda: results.have_all(open_ids), 60.0, "the open loop's results")
    finally:
        await probe.stop()
        await latency_producer.stop()
    return OpenLoop(commands, intended, clock[0], sent, probe, cpu)


def report_open_loop(args: argparse.Namespace, results: Results, run: OpenLoop) -> list[float]:
    """3. The open loop's latencies: warm-up apart, the transport floor, the split at the relay, the
    disk, per 2 s window and per command type. Returns the measured latencies."""
    start = run.start
    warming = [results.arrived[i] - (start + at) for i, at in run.intended.items() if at < args.warmup]
    measured = {i: at for i, at in run.intended.items() if at >= args.warmup}
    latencies = [results.arrived[i] - (start + at) for i, at in measured.items()]
    by_type: dict[str, list[float]] = {}
    for command in run.commands:
        mid = str(command.message_id)
        if mid in measured:
            by_type.setdefault(command.type, []).append(results.arrived[mid] - (start + measured[mid]))
    transport = [results.commands_seen[i] - (start + at) for i, at in measured.items() if i in results.commands_seen]
    lag = sorted(run.sent.send_lag)
    say(
        f"3. open loop: {run.sent.sent:,} commands at {args.rate}/s in {run.sent.duration:.1f} s, "
        f"errors {run.sent.errors}, sender lag p99 {1000 * percentile(lag, 99):.1f} ms"
    )
    if warming:
        say(f"   warm-up, the first {args.warmup:g} s (not counted): {latency_line(warming)}")
        say(f"   measured, the {args.seconds:g} s after it:")
    say(
        f"   transport floor (intended send -> a bare consumer has the command; partition 0): {latency_line(transport)}"
    )
    say(f"   latency (intended send -> result event arrival): {latency_line(latencies)}")
    # Where it goes: the result record's timestamp is taken by the relay's producer when it
    # batches the event, so it splits the latency into the worker's part and the last hop.
    wall_minus_clock = time.time() - now()
    relayed = [results.created_ms[i] / 1000 - wall_minus_clock - (start + at) for i, at in measured.items()]
    last_hop = [results.arrived[i] - (results.created_ms[i] / 1000 - wall_minus_clock) for i in measured]
    say(f"     of which intended send -> relay sends the result: {latency_line(relayed)}")
    say(f"     and relay sends -> result arrival: {latency_line(last_hop)}")
    say(f"   disk, whole open loop: a one-record commit (a WAL flush) every 0.1 s took {run.probe.summary()}")
    windows: dict[int, list[float]] = {}
    for message_id, offset_s in measured.items():
        windows.setdefault(int((offset_s - args.warmup) // 2), []).append(
            results.arrived[message_id] - (start + offset_s)
        )
    say(
        "   p99 per 2 s of the schedule (ms): "
        + " ".join(f"{1000 * sorted(v)[int(0.99 * (len(v) - 1))]:.0f}" for _, v in sorted(windows.items()))
    )
    for kind, values in sorted(by_type.items()):
        say(f"     {kind}: {latency_line(values)}")
    if results.rejections:
        sample = results.rejections[0]
        say(f"   WARNING {len(results.rejections)} commands rejected, e.g. {sample['reason_code']}: {sample['reason']}")
    return latencies


def report_summary(
    args: argparse.Namespace, results: Results, closed: ClosedLoop, opened: OpenLoop, latencies: list[float]
) -> None:
    p99 = p99_ms(latencies)
    say("\n== summary")
    say(f"   result events by type: {dict(sorted(results.types.items()))}")
    say(f"   sustained {closed.rate:,.0f} commands/s (target >= 1,000): {verdict(closed.rate >= 1000)}")
    say(f"   p99 {p99:.1f} ms at {args.rate}/s (target <= 50 ms): {verdict(p99 <= 50)}")
    say(
        f"   worker CPU ({args.replicas} process{'es' if args.replicas > 1 else ''}): "
        f"closed loop {replicas_cpu(closed.cpu, SERVICE):.0f} %, "
        f"open loop (warm-up included) {replicas_cpu(opened.cpu, SERVICE):.0f} % of a core"
    )


# -------------------------------------------------------------------------------------------- main


async def main() -> int:
    args = parse_args()
    bench = await begin(
        args,
        "lo",
        "license orders benchmark",
        accounts=args.accounts,
        licenses=args.licenses,
        commands=args.commands,
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        replicas=args.replicas,
    )
    rng = random.Random(args.seed)
    results = Results()
    # The transport floor is sampled on one partition of the commands: a bare reader of all of
    # them would double the broker's fetch requests during the latency it measures.
    reader = Reader(bench.stack, [EVENTS, TopicPartition(COMMANDS, 0)], results.on_record)
    kafka = producer(bench.stack)
    try:
        await start_worker(bench, args)
        await reader.start()
        await kafka.start()
        mix = await open_accounts(bench, args, kafka, results, rng)
        closed = await closed_loop(bench, args, kafka, results, mix)
        opened = await open_loop_at_rate(bench, args, results, mix)
        latencies = report_open_loop(args, results, opened)
        report_summary(args, results, closed, opened, latencies)
        return 1 if results.rejections else 0
    finally:
        await kafka.stop()
        await reader.stop()
        bench.workers.stop_all()


if __name__ == "__main__":
    run_main(main)
