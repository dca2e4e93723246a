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
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aiokafka import ConsumerRecord

from bench.common import (
    SERVICE_GROUPS,
    SERVICE_INPUTS,
    Admin,
    CpuSampler,
    Reader,
    Stack,
    Workers,
    account_opened_json,
    add_stack_arguments,
    banner,
    call_json,
    check_contract,
    connect,
    money_text,
    new_id,
    now,
    produce_batched,
    producer,
    provision,
    run_main,
    run_prefix,
    say,
    stack_from,
    verdict,
    wait_for,
)
from contracts import Actor
from contracts import messages as m
from contracts.topics import BILLING_CHARGES, BILLING_COMMANDS, LICENSING_COMMANDS, PLATFORM_ACCOUNTS, USAGE_CALLS

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


async def count(stack: Stack, database: str, table: str, lo: str, hi: str) -> int:
    conn = await connect(stack, database)
    try:
        return int(await conn.fetchval(f"select count(*) from {table} where account_id between $1 and $2", lo, hi))
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


async def main() -> int:
    args = parse_args()
    stack = stack_from(args)
    prefix = run_prefix("cc")
    banner(
        "cycle close benchmark",
        stack,
        accounts=args.accounts,
        calls_share=args.calls_share,
        calls=args.calls,
        device_share=args.device_share,
        run=prefix,
    )
    await provision(stack)
    workers = Workers(stack, prefix)
    sampler = CpuSampler(stack, workers)
    rng = random.Random(args.seed)
    lo, hi = f"{prefix}-", f"{prefix}-~"
    prefix_key = f"{prefix}-".encode()
    invoices = {"count": 0, "first": 0.0, "last": 0.0}

    def on_invoice(arrival: float, record: ConsumerRecord[Any, Any]) -> None:
        if record.key is not None and record.key.startswith(prefix_key):
            invoices["count"] += 1
            invoices["last"] = arrival
            if invoices["count"] == 1:
                invoices["first"] = arrival

    reader = Reader(stack, ["billing.invoices"], on_invoice)
    kafka = producer(stack)
    try:
        started = now()
        for service in SERVICES:
            workers.start(service)
        for service in SERVICES:
            await workers.wait_ready(service)
        async with Admin(stack) as admin:
            for service in SERVICES:
                await admin.wait_caught_up(
                    SERVICE_GROUPS[service], SERVICE_INPUTS[service], args.setup_timeout, "catching up"
                )
        say(f"0. three workers ready and caught up with earlier runs' records in {now() - started:.1f} s")
        await reader.start()
        await kafka.start()

        # Setup.
        setup = Setup(prefix, args.accounts, args, rng)
        check_contract(m.AccountOpened, account_opened_json(new_id(), setup.accounts[0], OPENED_AT))
        if setup.calls:
            check_contract(m.CallCharged, setup.calls[0][1])
        setup_started = now()
        with sampler.phase("setup: accounts"):
            await produce_batched(
                kafka,
                PLATFORM_ACCOUNTS.name,
                PLATFORM_ACCOUNTS.partitions,
                ((a.encode(), account_opened_json(new_id(), a, OPENED_AT)) for a in setup.accounts),
            )
            for database, table in (
                ("license_orders", "accounts"),
                ("usage_metering", "accounts"),
                ("cycle_close", "billing_accounts"),
            ):
                await wait_for(
                    lambda d=database, t=table: _at_least(stack, d, t, lo, hi, len(setup.accounts)),
                    args.setup_timeout,
                    f"{database} to open the accounts",
                    interval=1.0,
                    progress_every=30,
                )
        opened = now() - setup_started
        say(f"   setup: {len(setup.accounts):,} accounts opened in all three services in {opened:.1f} s")
        with sampler.phase("setup: purchases, calls, devices"):
            phase_started = now()
            await produce_batched(kafka, LICENSING_COMMANDS.name, LICENSING_COMMANDS.partitions, setup.purchases)
            await produce_batched(kafka, USAGE_CALLS.name, USAGE_CALLS.partitions, setup.calls)
            await produce_batched(kafka, BILLING_CHARGES.name, BILLING_CHARGES.partitions, setup.devices)
            for database, table, expected in (
                ("license_orders", "purchases", len(setup.purchases)),
                ("usage_metering", "calls", len(setup.calls)),
                ("cycle_close", "device_orders", len(setup.devices)),
            ):
                await wait_for(
                    lambda d=database, t=table, e=expected: _at_least(stack, d, t, lo, hi, e),
                    args.setup_timeout,
                    f"{database} to record the {table}",
                    interval=1.0,
                    progress_every=30,
                )
            async with Admin(stack) as admin:
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
        say(f"1. setup took {setup_time:.1f} s in all ({len(setup.accounts) / setup_time:,.0f} accounts/s)")

        # Scope.
        conn = await connect(stack, "cycle_close")
        try:
            others = int(
                await conn.fetchval(
                    "select count(*) from billing_accounts where next_close_end <= $1 "
                    "and not (account_id between $2 and $3)",
                    AS_OF,
                    lo,
                    hi,
                )
            )
        finally:
            await conn.close()
        scope = args.scope if args.scope != "auto" else ("all" if others == 0 else "chunks")
        if scope == "all":
            triggers = [trigger(None)]
            say(
                f"2. close: ONE CloseBillingCycles as_of {AS_OF}, no account_ids ({others} other due accounts on the stack)"
            )
        else:
            triggers = [trigger(setup.accounts[i : i + args.chunk]) for i in range(0, len(setup.accounts), args.chunk)]
            say(
                f"2. close: {len(triggers)} CloseBillingCycles as_of {AS_OF} with the run's account_ids in chunks of "
                f"{args.chunk:,} ({others:,} accounts of other runs are due on this stack; reset it for one trigger)"
            )

        # The close.
        timeline: dict[str, float] = {}
        with sampler.phase("close"):
            close_started = now()
            for command in triggers:
                await kafka.send_and_wait(
                    BILLING_COMMANDS.name, command.model_dump_json().encode(), key=command.account_id.encode()
                )
            sent = now() - close_started
            stage = await connect(stack, "cycle_close")
            try:
                trigger_ids = [command.message_id for command in triggers]

                async def progress_check() -> bool:
                    if "trigger processed" not in timeline:
                        done = await stage.fetchval(
                            "select count(*) from inbox where message_id = any($1::uuid[])", trigger_ids
                        )
                        if int(done) == len(trigger_ids):
                            timeline["trigger processed"] = now() - close_started
                    if invoices["count"] and "first invoice" not in timeline:
                        timeline["first invoice"] = invoices["first"] - close_started
                    return invoices["count"] >= len(setup.accounts)

                def progress() -> str:
                    return f"{invoices['count']:,}/{len(setup.accounts):,} invoices"

                await wait_for(
                    progress_check, args.timeout, "the invoices", interval=0.1, progress=progress, progress_every=15
                )
            finally:
                await stage.close()
            close_time = invoices["last"] - close_started
        rate = len(setup.accounts) / close_time
        say(
            f"   trigger(s) sent in {sent:.2f} s; processed (seal requests in the outbox) after "
            f"{timeline.get('trigger processed', float('nan')):.1f} s; first invoice after "
            f"{timeline.get('first invoice', float('nan')):.1f} s"
        )
        say(
            f"   last InvoiceIssued of the run after {close_time:.1f} s: {len(setup.accounts):,} invoices, "
            f"{rate:,.0f} invoices/s"
        )
        conn = await connect(stack, "cycle_close")
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

        # The rerun.
        again = [trigger(command.account_ids) for command in triggers]
        before = invoices["count"]
        rerun_started = now()
        for command in again:
            await kafka.send_and_wait(
                BILLING_COMMANDS.name, command.model_dump_json().encode(), key=command.account_id.encode()
            )
        conn = await connect(stack, "cycle_close")
        try:
            ids = [command.message_id for command in again]

            async def processed() -> bool:
                found = await conn.fetchval("select count(*) from inbox where message_id = any($1::uuid[])", ids)
                return int(found) == len(ids)

            await wait_for(processed, args.timeout, "the rerun trigger to be processed", interval=0.05)
            rerun_time = now() - rerun_started
            requested = int(
                await conn.fetchval("select count(*) from cycle_closes where trigger_id = any($1::uuid[])", ids)
            )
        finally:
            await conn.close()
        await asyncio.sleep(2.0)
        extra = invoices["count"] - before
        say(
            f"3. rerun: same trigger again processed after {rerun_time:.2f} s; close requests it made: {requested}, "
            f"invoices it issued (2 s grace): {extra}"
        )

        say("\n== summary")
        say(f"   setup {setup_time:.0f} s for {len(setup.accounts):,} accounts (not part of the targets)")
        target = 60.0 * len(setup.accounts) / 100_000
        scaled = (
            ""
            if len(setup.accounts) == 100_000
            else f"; linear extrapolation to 100,000 (not measured): {100_000 / rate:.0f} s, "
            f"on target here if <= {target:.1f} s"
        )
        say(
            f"   close {close_time:.1f} s for {len(setup.accounts):,} accounts = {rate:,.0f} invoices/s{scaled} "
            f"(target <= 60 s for 100,000): {verdict(close_time <= target)}"
        )
        say(
            f"   rerun {rerun_time:.2f} s, {extra} invoices (target <= 10 s, 0 invoices): {verdict(rerun_time <= 10 and extra == 0)}"
        )
        say(f"   invoice totals as computed: {verdict(total_ok)}")
        return 0 if total_ok and extra == 0 and requested == 0 else 1
    finally:
        await kafka.stop()
        await reader.stop()
        workers.stop_all()


async def _at_least(stack: Stack, database: str, table: str, lo: str, hi: str, expected: int) -> bool:
    return await count(stack, database, table, lo, hi) >= expected


if __name__ == "__main__":
    run_main(main)
