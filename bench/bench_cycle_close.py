"""Cycle close benchmark: one CloseBillingCycles for many accounts, then the same trigger again.

1. Starts the three workers and lets them catch up with what is already on their topics.
2. Setup (timed separately): ``--accounts`` accounts opened 2026-11-01 (billing day 1), each
   buys 1-5 user licenses in November; ``--calls-share`` of them make ``--calls`` calls and
   ``--device-share`` order desk phones. Waits until every worker has recorded all of it and
   every consumer group has committed everything on its input topics.
3. The close: ONE ``CloseBillingCycles {as_of: 2026-12-01}`` (role service, no account_ids: every
   due account), timed until the last ``InvoiceIssued`` of the run's accounts arrived. When
   accounts of other runs are still due on the stack, ``--scope auto`` sends the run's account
   ids in chunks instead (``--scope all`` forces one trigger for everything); the output says
   which. The invoices' total is checked against the amount computed from what was sent.
4. The rerun: the same trigger again (a new message id), timed until it was processed (its
   message id in cycle close's ``inbox``); it must issue no invoice.

Targets: <= 60 s for 100,000 accounts; <= 10 s for the rerun.
Run ``python -m bench.bench_cycle_close --help``; docs/benchmarks.md has the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord

from bench.common import (
    SERVICE_GROUPS,
    SERVICE_INPUTS,
    Admin,
    Bench,
    Reader,
    Stack,
    account_opened_json,
    add_stack_arguments,
    begin,
    call_json,
    check_contract,
    command_headers,
    connect,
    count_between,
    money_text,
    new_id,
    now,
    prefix_bounds,
    produce_accounts_opened,
    produce_batched,
    producer,
    run_main,
    say,
    verdict,
    wait_for,
)
from contracts import Actor
from contracts import messages as m
from contracts.topics import BILLING_CHARGES, BILLING_COMMANDS, LICENSING_COMMANDS, USAGE_CALLS

SERVICES = ("license_orders", "usage_metering", "cycle_close")
AS_OF = date(2026, 12, 1)
OPENED_AT = "2026-11-01T00:00:00+00:00"
USER_PRICE = Decimal("15.00")
CENT = Decimal("0.01")
ADMIN = Actor(id="admin@bench", role="office_admin")
SCHEDULER = Actor(id="scheduler", role="service")
DEVICES = (("VVX-450", "Desk phone", Decimal("129.00")), ("HS-20", "Headset", Decimal("49.99")))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_cycle_close",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--accounts", type=int, help="accounts to close (default 100,000; --quick 1,000)")
    parser.add_argument("--calls-share", type=float, default=0.5, help="share of accounts with calls (default 0.5)")
    parser.add_argument("--calls", type=int, default=3, help="calls per such account (default 3)")
    parser.add_argument("--device-share", type=float, default=0.1, help="share with a device order (default 0.1)")
    parser.add_argument(
        "--scope",
        choices=("auto", "all", "chunks"),
        default="auto",
        help="one trigger for every due account (all), the run's ids in chunks, or all unless others are due (auto)",
    )
    parser.add_argument("--chunk", type=int, default=10_000, help="account ids per trigger in chunks scope")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--setup-timeout", type=float, default=1800.0, help="bound on the setup, seconds")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on the close, seconds")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 accounts")
    add_stack_arguments(parser)
    args = parser.parse_args()
    if args.accounts is None:
        args.accounts = 1_000 if args.quick else 100_000
    return args


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def at(day: date) -> datetime:
    return datetime.combine(day, time(12), UTC)


class Setup:
    """The run's inputs, pre-serialised, and the invoice total they must add up to."""

    def __init__(self, prefix: str, accounts: int, args: argparse.Namespace, rng: random.Random) -> None:
        self.accounts = [f"{prefix}-{i:06d}" for i in range(accounts)]
        self.purchases: list[tuple[bytes, bytes]] = []
        self.calls: list[tuple[bytes, bytes]] = []
        self.devices: list[tuple[bytes, bytes]] = []
        self.expected_total = Decimal("0.00")
        for account in self.accounts:
            key = account.encode()
            quantity = 1 + rng.randrange(5)
            day = 1 + rng.randrange(28)
            purchase = m.PurchaseLicenses(
                message_id=uuid.uuid4(),
                account_id=account,
                occurred_at=at(date(2026, 11, day)),
                actor=ADMIN,
                product="user",
                quantity=quantity,
            )
            self.purchases.append((key, purchase.model_dump_json().encode()))
            remaining = (AS_OF - date(2026, 11, day)).days
            self.expected_total += cents(USER_PRICE * quantity * remaining / Decimal(30))  # proration
            self.expected_total += cents(USER_PRICE * quantity)  # December in advance
            if rng.random() < args.calls_share:
                accrued = 0
                for n in range(args.calls):
                    cost = 10_000 + rng.randrange(2_990_000)
                    accrued += cost
                    when = f"2026-11-{1 + rng.randrange(29):02d}T10:00:00+00:00"
                    self.calls.append((key, call_json(new_id(), account, when, f"call-{n}", money_text(cost))))
                self.expected_total += cents(Decimal(accrued) / 1_000_000)
            if rng.random() < args.device_share:
                sku, description, price = DEVICES[rng.randrange(len(DEVICES))]
                quantity = 1 + rng.randrange(3)
                device = m.DevicePurchased(
                    message_id=uuid.uuid4(),
                    account_id=account,
                    occurred_at=at(date(2026, 11, 1 + rng.randrange(29))),
                    order_id=f"ord-{account}",
                    sku=sku,
                    description=description,
                    quantity=quantity,
                    unit_price=price,
                )
                self.devices.append((key, device.model_dump_json().encode()))
                self.expected_total += cents(price * quantity)


async def _at_least(stack: Stack, database: str, table: str, lo: str, hi: str, expected: int) -> bool:
    conn = await connect(stack, database)
    try:
        return await count_between(conn, table, lo, hi) >= expected
    finally:
        await conn.close()


def trigger(account_ids: list[str] | None) -> m.CloseBillingCycles:
    return m.CloseBillingCycles(
        message_id=uuid.uuid4(),
        account_id="platform",
        occurred_at=at(AS_OF),
        actor=SCHEDULER,
        as_of=AS_OF,
        account_ids=account_ids,
    )


class Invoices:
    """The run's ``InvoiceIssued`` records on billing.invoices as they arrive: how many accounts have
    one, first and last. Each account gets one invoice here, so an account counts once: the relay
    publishes at least once, and a repeated record must not end the wait before the last invoice."""

    def __init__(self, prefix: str) -> None:
        self.prefix_key = f"{prefix}-".encode()
        self.accounts: set[bytes] = set()
        self.repeats = 0
        self.first = 0.0
        self.last = 0.0

    @property
    def count(self) -> int:
        return len(self.accounts)

    def on_record(self, arrival: float, record: ConsumerRecord[Any, Any]) -> None:
        if record.key is not None and record.key.startswith(self.prefix_key):
            if record.key in self.accounts:
                self.repeats += 1
                return
            self.accounts.add(record.key)
            self.last = arrival
            if len(self.accounts) == 1:
                self.first = arrival


async def send_triggers(kafka: AIOKafkaProducer, triggers: list[m.CloseBillingCycles]) -> None:
    for command in triggers:
        key, value = command.account_id.encode(), command.model_dump_json().encode()
        headers = command_headers(BILLING_COMMANDS.name, key, value)
        await kafka.send_and_wait(BILLING_COMMANDS.name, value, key=key, headers=headers)


# ------------------------------------------------------------------------------------------ phases


async def start_workers(bench: Bench, args: argparse.Namespace) -> None:
    """0. The three workers, ready and caught up with what earlier runs left on their topics."""
    started = now()
    await bench.workers.start_ready_together([(service, service) for service in SERVICES])
    async with Admin(bench.stack) as admin:
        for service in SERVICES:
            await admin.wait_caught_up(
                SERVICE_GROUPS[service], SERVICE_INPUTS[service], args.setup_timeout, "catching up"
            )
    say(f"0. three workers ready and caught up with earlier runs' records in {now() - started:.1f} s")


async def wait_recorded(bench: Bench, args: argparse.Namespace, expected: Sequence[tuple[str, str, int, str]]) -> None:
    """Until each (database, table) holds ``count`` rows of the run's accounts."""
    lo, hi = prefix_bounds(bench.prefix)
    for database, table, count, what in expected:
        await wait_for(
            lambda d=database, t=table, c=count: _at_least(bench.stack, d, t, lo, hi, c),
            args.setup_timeout,
            what,
            interval=1.0,
            progress_every=30,
        )


async def set_up(
    bench: Bench, args: argparse.Namespace, kafka: AIOKafkaProducer, rng: random.Random
) -> tuple[Setup, float]:
    """1. The accounts, then their purchases, calls and device orders, recorded by every service and
    every group caught up; returns the inputs and the set-up time."""
    setup = Setup(bench.prefix, args.accounts, args, rng)
    check_contract(m.AccountOpened, account_opened_json(new_id(), setup.accounts[0], OPENED_AT))
    if setup.calls:
        check_contract(m.CallCharged, setup.calls[0][1])
    setup_started = now()
    accounts = len(setup.accounts)
    with bench.sampler.phase("setup: accounts"):
        await produce_accounts_opened(kafka, setup.accounts, OPENED_AT)
        await wait_recorded(
            bench,
            args,
            [
                (database, table, accounts, f"{database} to open the accounts")
                for database, table in (
                    ("license_orders", "accounts"),
                    ("usage_metering", "accounts"),
                    ("cycle_close", "billing_accounts"),
                )
            ],
        )
    opened = now() - setup_started
    say(f"   setup: {accounts:,} accounts opened in all three services in {opened:.1f} s")
    with bench.sampler.phase("setup: purchases, calls, devices"):
        phase_started = now()
        await produce_batched(kafka, LICENSING_COMMANDS.name, LICENSING_COMMANDS.partitions, setup.purchases)
        await produce_batched(kafka, USAGE_CALLS.name, USAGE_CALLS.partitions, setup.calls)
        await produce_batched(kafka, BILLING_CHARGES.name, BILLING_CHARGES.partitions, setup.devices)
        await wait_recorded(
            bench,
            args,
            [
                (database, table, count, f"{database} to record the {table}")
                for database, table, count in (
                    ("license_orders", "purchases", len(setup.purchases)),
                    ("usage_metering", "calls", len(setup.calls)),
                    ("cycle_close", "device_orders", len(setup.devices)),
                )
            ],
        )
        async with Admin(bench.stack) as admin:
            for service in SERVICES:
                await admin.wait_caught_up(
                    SERVICE_GROUPS[service], SERVICE_INPUTS[service], args.setup_timeout, "setup"
                )
        rest = now() - phase_started
    setup_time = now() - setup_started
    say(
        f"   setup: {len(setup.purchases):,} purchases, {len(setup.calls):,} calls, {len(setup.devices):,} device "
        f"orders recorded and every group caught up in {rest:.1f} s"
    )
    say(f"1. setup took {setup_time:.1f} s in all ({accounts / setup_time:,.0f} accounts/s)")
    return setup, setup_time


async def choose_triggers(bench: Bench, args: argparse.Namespace, setup: Setup) -> list[m.CloseBillingCycles]:
    """2. One trigger for every due account, or the run's account ids in chunks when other runs'
    accounts are due on this stack too (``--scope``)."""
    lo, hi = prefix_bounds(bench.prefix)
    conn = await connect(bench.stack, "cycle_close")
    try:
        others = int(
            await conn.fetchval(
                "select count(*) from billing_accounts where next_close_end <= $1 and not (account_id between $2 and $3)",
                AS_OF,
                lo,
                hi,
            )
        )
    finally:
        await conn.close()
    scope = args.scope if args.scope != "auto" else ("all" if others == 0 else "chunks")
    if scope == "all":
        say(
            f"2. close: ONE CloseBillingCycles as_of {AS_OF}, no account_ids ({others} other due accounts on the stack)"
        )
        return [trigger(None)]
    triggers = [trigger(setup.accounts[i : i + args.chunk]) for i in range(0, len(setup.accounts), args.chunk)]
    say(
        f"2. close: {len(triggers)} CloseBillingCycles as_of {AS_OF} with the run's account_ids in chunks of "
        f"{args.chunk:,} ({others:,} accounts of other runs are due on this stack; reset it for one trigger)"
    )
    return triggers


async def close(
    bench: Bench,
    args: argparse.Namespace,
    kafka: AIOKafkaProducer,
    triggers: list[m.CloseBillingCycles],
    invoices: Invoices,
    accounts: int,
) -> float:
    """The close: the trigger(s) sent, timed until the run's last invoice arrived; returns that time."""
    timeline: dict[str, float] = {}
    with bench.sampler.phase("close"):
        close_started = now()
        await send_triggers(kafka, triggers)
        sent = now() - close_started
        stage = await connect(bench.stack, "cycle_close")
        try:
            trigger_ids = [command.message_id for command in triggers]

            async def progress_check() -> bool:
                if "trigger processed" not in timeline:
                    done = await stage.fetchval(
                        "select count(distinct message_id) from inbox where message_id = any($1::uuid[])", trigger_ids
                    )
                    if int(done) == len(trigger_ids):
                        timeline["trigger processed"] = now() - close_started
                if invoices.count and "first invoice" not in timeline:
                    timeline["first invoice"] = invoices.first - close_started
                return invoices.count >= accounts

            def progress() -> str:
                return f"{invoices.count:,}/{accounts:,} invoices"

            await wait_for(
                progress_check, args.timeout, "the invoices", interval=0.1, progress=progress, progress_every=15
            )
        finally:
            await stage.close()
        close_time = invoices.last - close_started
    say(
        f"   trigger(s) sent in {sent:.2f} s; processed (seal requests in the outbox) after "
        f"{timeline.get('trigger processed', float('nan')):.1f} s; first invoice after "
        f"{timeline.get('first invoice', float('nan')):.1f} s"
    )
    say(
        f"   last InvoiceIssued of the run after {close_time:.1f} s: {accounts:,} invoices, {accounts / close_time:,.0f} invoices/s"
        f" ({invoices.repeats:,} repeated records, not counted)"
    )
    return close_time


async def check_invoices(bench: Bench, setup: Setup) -> bool:
    """Every account invoiced once, and the total what the inputs add up to."""
    lo, hi = prefix_bounds(bench.prefix)
    conn = await connect(bench.stack, "cycle_close")
    try:
        row = await conn.fetchrow(
            "select count(*), coalesce(sum(total), 0) from invoices where account_id between $1 and $2", lo, hi
        )
    finally:
        await conn.close()
    total_ok = int(row[0]) == len(setup.accounts) and Decimal(row[1]) == setup.expected_total
    say(
        f"   invoices in the database: {row[0]:,}, total billed {row[1]} USD; expected {setup.expected_total}: "
        f"{'OK' if total_ok else 'MISMATCH'}"
    )
    return total_ok


async def rerun(
    bench: Bench,
    args: argparse.Namespace,
    kafka: AIOKafkaProducer,
    triggers: list[m.CloseBillingCycles],
    invoices: Invoices,
) -> tuple[float, int, int]:
    """3. The same trigger(s) again with new message ids, timed until processed; returns the time,
    the close requests they made and the invoices they issued (both must be 0)."""
    again = [trigger(command.account_ids) for command in triggers]
    before = invoices.count
    rerun_started = now()
    await send_triggers(kafka, again)
    conn = await connect(bench.stack, "cycle_close")
    try:
        ids = [command.message_id for command in again]

        async def processed() -> bool:
            found = await conn.fetchval(
                "select count(distinct message_id) from inbox where message_id = any($1::uuid[])", ids
            )
            return int(found) == len(ids)

        await wait_for(processed, args.timeout, "the rerun trigger to be processed", interval=0.05)
        rerun_time = now() - rerun_started
        requested = int(
            await conn.fetchval("select count(*) from cycle_closes where trigger_id = any($1::uuid[])", ids)
        )
    finally:
        await conn.close()
    await asyncio.sleep(2.0)
    extra = invoices.count - before
    say(
        f"3. rerun: same trigger again processed after {rerun_time:.2f} s; close requests it made: {requested}, "
        f"invoices it issued (2 s grace): {extra}"
    )
    return rerun_time, requested, extra


def report_summary(
    accounts: int, setup_time: float, close_time: float, rerun_time: float, extra: int, total_ok: bool
) -> None:
    rate = accounts / close_time
    say("\n== summary")
    say(f"   setup {setup_time:.0f} s for {accounts:,} accounts (not part of the targets)")
    target = 60.0 * accounts / 100_000
    scaled = (
        ""
        if accounts == 100_000
        else f"; linear extrapolation to 100,000 (not measured): {100_000 / rate:.0f} s, "
        f"on target here if <= {target:.1f} s"
    )
    say(
        f"   close {close_time:.1f} s for {accounts:,} accounts = {rate:,.0f} invoices/s{scaled} "
        f"(target <= 60 s for 100,000): {verdict(close_time <= target)}"
    )
    say(
        f"   rerun {rerun_time:.2f} s, {extra} invoices (target <= 10 s, 0 invoices): {verdict(rerun_time <= 10 and extra == 0)}"
    )
    say(f"   invoice totals as computed: {verdict(total_ok)}")


# -------------------------------------------------------------------------------------------- main


async def main() -> int:
    args = parse_args()
    bench = await begin(
        args,
        "cc",
        "cycle close benchmark",
        accounts=args.accounts,
        calls_share=args.calls_share,
        calls=args.calls,
        device_share=args.device_share,
    )
    rng = random.Random(args.seed)
    invoices = Invoices(bench.prefix)
    reader = Reader(bench.stack, ["billing.invoices"], invoices.on_record)
    kafka = producer(bench.stack)
    try:
        await start_workers(bench, args)
        await reader.start()
        await kafka.start()
        setup, setup_time = await set_up(bench, args, kafka, rng)
        triggers = await choose_triggers(bench, args, setup)
        close_time = await close(bench, args, kafka, triggers, invoices, len(setup.accounts))
        total_ok = await check_invoices(bench, setup)
        rerun_time, requested, extra = await rerun(bench, args, kafka, triggers, invoices)
        report_summary(len(setup.accounts), setup_time, close_time, rerun_time, extra, total_ok)
        return 0 if total_ok and extra == 0 and requested == 0 else 1
    finally:
        await kafka.stop()
        await reader.stop()
        bench.workers.stop_all()


if __name__ == "__main__":
    run_main(main)
