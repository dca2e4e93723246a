"""Random billing histories through the real stack, checked against a reference model of the rules.

For each account: random purchases, removals, restores, calls (some reported twice) and device
orders over three cycles, each cycle closed by the scheduler once its activity was processed.
The model (written from domain.md, not from the services) computes every invoice: proration per
purchase, recurring per kept license, calls up to the cap, devices. Sum and each invoice must
match to the cent.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from contracts import messages as m
from shared.cycles import Cycle, cycle_containing, next_cycle
from tests.support import ADMIN, SCHEDULER, Bus, message, new_account, scalar, wait_until

pytestmark = pytest.mark.stack
PRICES = {
    "user": Decimal("15.00"),
    "room_phone": Decimal("15.00"),
    "shared_line": Decimal("20.00"),
    "fax": Decimal("10.00"),
}
CAP = Decimal("250.00")


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass
class ModelAccount:
    billing_day: int
    purchased: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PRICES, 0))
    scheduled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PRICES, 0))
    invoices: dict[date, Decimal] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)


def history(rng: random.Random, account: str, model: ModelAccount, cycle: Cycle) -> tuple[list, list, list, Decimal]:
    """One cycle of random activity: (license commands, calls, device orders, expected invoice)."""
    commands, calls, devices = [], [], []
    proration = Decimal("0")
    days = sorted(rng.sample(range(cycle.days), k=min(6, cycle.days)))
    for offset in days:
        day = cycle.start + timedelta(days=offset)
        product = rng.choice(list(PRICES))
        available = model.purchased[product] - model.scheduled[product]
        if rng.random() < 0.3 and available > 0:
            quantity = rng.randint(1, available)
            model.scheduled[product] += quantity
            commands.append(message(m.RemoveLicenses, account, day, actor=ADMIN, product=product, quantity=quantity))
        else:
            quantity = rng.randint(1, 4)
            restored = min(quantity, model.scheduled[product])
            added = quantity - restored
            model.scheduled[product] -= restored
            model.purchased[product] += added
            proration += cents(PRICES[product] * added * (cycle.end - day).days / Decimal(cycle.days))
            commands.append(message(m.PurchaseLicenses, account, day, actor=ADMIN, product=product, quantity=quantity))
    used = Decimal("0")
    for n in range(rng.randint(0, 12)):
        cost = Decimal(rng.randint(1, 60_000_000)) / Decimal(1_000_000)
        day = cycle.start + timedelta(days=rng.randrange(cycle.days))
        sent = message(m.CallCharged, account, day, call_id=f"{cycle.start}-{n}", cost=cost)
        calls.append(sent)
        if rng.random() < 0.2:
            calls.append(sent.model_copy(update={"message_id": uuid.uuid4()}))  # reported twice
        used += cost
    device_total = Decimal("0")
    if rng.random() < 0.5:
        quantity, price = rng.randint(1, 3), Decimal(rng.randint(1000, 30000)) / 100
        devices.append(
            message(
                m.DevicePurchased,
                account,
                cycle.start + timedelta(days=rng.randrange(cycle.days)),
                order_id=f"order-{cycle.start}",
                sku="ATA-1",
                description="ATA",
                quantity=quantity,
                unit_price=price,
            )
        )
        device_total = cents(price * quantity)
        model.devices.append(f"order-{cycle.start}")
    # Cycle end: removals apply; the kept licenses are billed for the next cycle in advance.
    for product in PRICES:
        model.purchased[product] -= model.scheduled[product]
        model.scheduled[product] = 0
    recurring = sum((PRICES[p] * n for p, n in model.purchased.items()), Decimal("0"))
    expected = proration + recurring + cents(min(used, CAP)) + device_total
    return commands, calls, devices, expected


async def test_random_histories_bill_exactly_what_the_rules_say(stack: Bus, dbs) -> None:
    rng = random.Random(20261128)
    accounts = {new_account(): ModelAccount(billing_day=rng.choice([1, 15, 28, 29, 30, 31])) for _ in range(8)}
    cycles = {}
    for account, model in accounts.items():
        opened = date(2026, 10, 1) + timedelta(days=rng.randrange(60))
        cycles[account] = cycle_containing(model.billing_day, opened)
        await stack.send("platform.accounts", message(m.AccountOpened, account, opened, billing_day=model.billing_day))
    ids = list(accounts)
    # Commands for an account license orders does not know yet are rejected (events are parked):
    # send them once it has the openings, as the admin UI would.
    await wait_until(
        lambda: scalar(
            dbs["license_orders"], "select count(*) = :n from accounts where account_id = any(:a)", n=len(ids), a=ids
        ),
        what="license orders to open the accounts",
    )

    distinct_calls = 0
    for _ in range(3):
        closes = []
        for account, model in accounts.items():
            cycle = cycles[account]
            commands, calls, devices, expected = history(rng, account, model, cycle)
            model.invoices[cycle.start] = expected
            for command in commands:
                await stack.send("licensing.commands", command)
            for call in calls:
                await stack.send("usage.calls", call)
            for device in devices:
                await stack.send("billing.charges", device)
            for command in commands:
                [reply] = await stack.wait_count("licensing.events", 1, causation_id=str(command.message_id))
                assert reply["type"] != "CommandRejected", reply
            distinct_calls += len({c.call_id for c in calls})
            closes.append(
                message(
                    m.CloseBillingCycles, "platform", cycle.end, actor=SCHEDULER, as_of=cycle.end, account_ids=[account]
                )
            )
            cycles[account] = next_cycle(model.billing_day, cycle)
        await wait_until(
            lambda n=distinct_calls: scalar(  # type: ignore[misc]
                dbs["usage_metering"], "select count(*) = :n from calls where account_id = any(:a)", n=n, a=ids
            ),
            what="every call recorded",
        )
        await wait_until(
            lambda: scalar(
                dbs["cycle_close"],
                "select count(*) = :n from device_orders where account_id = any(:a)",
                n=sum(1 for model in accounts.values() for _ in model.devices),
                a=ids,
            ),
            what="every device order recorded",
        )
        for close in closes:  # each account's cycle ends on its own billing day
            await stack.send("billing.commands", close)
        for account, model in accounts.items():
            for start in model.invoices:
                await stack.wait_count(
                    "billing.invoices", 1, timeout=60, account_id=account, cycle_start=start.isoformat()
                )

    for account, model in accounts.items():
        issued = {i["cycle_start"]: Decimal(i["total"]) for i in stack.matching("billing.invoices", account_id=account)}
        assert issued == {start.isoformat(): total for start, total in model.invoices.items()}, account
    billed = sum(Decimal(i["total"]) for i in stack.matching("billing.invoices") if i["account_id"] in accounts)
    assert billed == sum(sum(model.invoices.values()) for model in accounts.values())
