"""A known workload for the fault scenarios, and the books it must produce (the reference model).

Every account opens on Nov 1 (billing day 1), buys licenses and invites more people than it
has licenses, reports calls (some twice, some redelivered) and a device order (twice). What
the books must say afterwards follows from the rules alone, whatever faults happened.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from contracts import messages as m
from deploy.client import Bus
from tests.support import ADMIN, SCHEDULER, message, rows, scalar, wait_until

CAP = Decimal("250.00")
PRICE = Decimal("15.00")
NOV_1, DEC_1 = date(2026, 11, 1), date(2026, 12, 1)


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass
class Workload:
    accounts: list[str]
    licenses: int = 5
    invites: int = 7
    calls_per_account: int = 12
    seed: int = 7
    opened: list[m.AccountOpened] = field(default_factory=list)
    commands: list[m.Command] = field(default_factory=list)
    calls: list[m.CallCharged] = field(default_factory=list)
    devices: list[m.DevicePurchased] = field(default_factory=list)
    costs: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    @classmethod
    def build(cls, size: int, prefix: str, **options: Any) -> Workload:
        run = uuid.uuid4().hex[:6]
        workload = cls([f"{prefix}-{run}-{n}" for n in range(size)], **options)
        rng = random.Random(workload.seed)
        for account in workload.accounts:
            workload.opened.append(message(m.AccountOpened, account, NOV_1, billing_day=1))
            workload.commands.append(
                message(m.PurchaseLicenses, account, NOV_1, actor=ADMIN, product="user", quantity=workload.licenses)
            )
            for n in range(workload.invites):
                workload.commands.append(
                    message(
                        m.AssignLicense, account, date(2026, 11, 2), actor=ADMIN, product="user", assignee_id=f"p{n}"
                    )
                )
            workload.costs[account] = {}
            for n in range(workload.calls_per_account):
                cost = Decimal(rng.randint(1, 40_000_000)) / Decimal(1_000_000)
                call = message(m.CallCharged, account, date(2026, 11, 3 + n % 20), call_id=f"c{n}", cost=cost)
                workload.costs[account][call.call_id] = cost
                workload.calls.append(call)
                if n % 4 == 0:  # the platform reports the same call again under a new message id
                    workload.calls.append(call.model_copy(update={"message_id": uuid.uuid4()}))
            workload.devices.append(
                message(
                    m.DevicePurchased,
                    account,
                    date(2026, 11, 20),
                    order_id="o1",
                    sku="ATA",
                    description="ATA",
                    quantity=2,
                    unit_price=Decimal("49.99"),
                )
            )
        return workload

    async def open_accounts(self, bus: Bus, dbs: Any, timeout: float = 60) -> None:
        """Open the accounts and wait until license orders knows them, as the admin UI would."""
        for opened in self.opened:
            await bus.send("platform.accounts", opened)
        await wait_until(
            lambda: scalar(
                dbs["license_orders"],
                "select count(*) = :n from accounts where account_id = any(:a)",
                n=len(self.accounts),
                a=self.accounts,
            ),
            timeout=timeout,
            what="the accounts to open",
        )

    def stream(self) -> list[tuple[str, Any]]:
        """Every input message after the accounts opened (one account's commands stay in order)."""
        out: list[tuple[str, Any]] = [("licensing.commands", c) for c in self.commands]
        out += [("usage.calls", c) for c in self.calls]
        out += [("billing.charges", d) for d in self.devices]
        out += [("billing.charges", d) for d in self.devices]  # reported twice
        return out

    async def send(self, bus: Bus, items: list[tuple[str, Any]] | None = None) -> int:
        items = self.stream() if items is None else items
        for topic, item in items:
            await bus.send(topic, item)
        return len(items)

    # ------------------------------------------------------------------ the reference model
    def expected_accrual(self, account: str) -> tuple[Decimal, Decimal]:
        used = sum(self.costs[account].values(), Decimal("0"))
        return min(used, CAP), max(Decimal("0"), used - CAP)

    def expected_invoice_total(self, account: str) -> Decimal:
        proration = PRICE * self.licenses  # bought Nov 1: the whole first month
        recurring = PRICE * self.licenses
        device = Decimal("99.98")
        return proration + recurring + cents(self.expected_accrual(account)[0]) + device

    # ------------------------------------------------------------------ checks
    async def settled(self, bus: Bus, dbs: Any, timeout: float = 120) -> None:
        """Wait until every input had its effect (or fail after ``timeout``)."""
        ids = self.accounts
        for command in self.commands:
            await bus.wait_count("licensing.events", 1, timeout=timeout, causation_id=str(command.message_id))
        await wait_until(
            lambda: scalar(
                dbs["usage_metering"],
                "select count(*) = :n from calls where account_id = any(:a)",
                n=sum(len(c) for c in self.costs.values()),
                a=ids,
            ),
            timeout=timeout,
            what="every distinct call recorded",
        )
        await wait_until(
            lambda: scalar(
                dbs["cycle_close"],
                "select count(*) = :n from device_orders where account_id = any(:a)",
                n=len(self.accounts),
                a=ids,
            ),
            timeout=timeout,
            what="every device order recorded",
        )

    async def check_books(self, bus: Bus, dbs: Any) -> list[str]:
        """Every invariant of the fault suite; returns the mismatches (an empty list when the books are right)."""
        problems: list[str] = []
        ids = self.accounts
        balances = {
            a: (p, s, x)
            for a, p, s, x in await rows(
                dbs["license_orders"],
                "select account_id, purchased, assigned, scheduled_for_removal from balances where account_id = any(:a)",
                a=ids,
            )
        }
        for account in ids:
            want = (self.licenses, min(self.licenses, self.invites), 0)
            if balances.get(account) != want:
                problems.append(f"{account}: balance {balances.get(account)} != {want}")
        meters = {
            a: (b, o)
            for a, b, o in await rows(
                dbs["usage_metering"],
                "select account_id, billable, over_cap from meters where account_id = any(:a) and cycle_start = :d",
                a=ids,
                d=NOV_1,
            )
        }
        for account in ids:
            if meters.get(account) != self.expected_accrual(account):
                problems.append(f"{account}: accrual {meters.get(account)} != {self.expected_accrual(account)}")
        for command in self.commands:
            replies = {r["message_id"] for r in bus.matching("licensing.events", causation_id=str(command.message_id))}
            if len(replies) != 1:
                problems.append(f"command {command.message_id}: {len(replies)} distinct results")
        expected_ok = ["LicensesPurchased"] + ["LicenseAssigned"] * min(self.licenses, self.invites)
        expected_ok += ["CommandRejected"] * max(0, self.invites - self.licenses)
        for account in ids:
            mine = [c for c in self.commands if c.account_id == account]
            got = [bus.matching("licensing.events", causation_id=str(c.message_id))[0]["type"] for c in mine]
            if got != expected_ok:
                problems.append(f"{account}: results {got}")
        inbox = {
            "license_orders": [c.message_id for c in self.commands] + [o.message_id for o in self.opened],
            # calls are recorded by (account, call id) in `calls` (checked by settled()), not in the inbox
            "usage_metering": [o.message_id for o in self.opened],
            "cycle_close": [d.message_id for d in self.devices] + [o.message_id for o in self.opened],
        }
        for service, message_ids in inbox.items():
            seen = await scalar(
                dbs[service], "select count(distinct message_id) from inbox where message_id = any(:i)", i=message_ids
            )
            if seen != len(set(message_ids)):
                problems.append(f"{service}: {len(set(message_ids)) - seen} messages never processed")
        return problems

    async def close_and_check_invoices(self, bus: Bus, dbs: Any, timeout: float = 120) -> list[str]:
        await bus.send(
            "billing.commands",
            message(m.CloseBillingCycles, "platform", DEC_1, actor=SCHEDULER, as_of=DEC_1, account_ids=self.accounts),
        )
        problems = []
        for account in self.accounts:
            await bus.wait_count("billing.invoices", 1, timeout=timeout, account_id=account, cycle_start="2026-11-01")
        for account in self.accounts:
            issued = {i["message_id"]: i for i in bus.matching("billing.invoices", account_id=account)}
            if len({i["invoice_id"] for i in issued.values()}) != 1:
                problems.append(f"{account}: {len(issued)} invoices")
                continue
            invoice = next(iter(issued.values()))
            if Decimal(invoice["total"]) != self.expected_invoice_total(account):
                problems.append(f"{account}: invoice {invoice['total']} != {self.expected_invoice_total(account)}")
            devices = [line for line in invoice["lines"] if line["kind"] == "device"]
            if len(devices) != 1:
                problems.append(f"{account}: {len(devices)} device lines")
        stored = await scalar(
            dbs["cycle_close"], "select count(*) from invoices where account_id = any(:a)", a=self.accounts
        )
        if stored != len(self.accounts):
            problems.append(f"{stored} invoices stored for {len(self.accounts)} accounts")
        return problems


def raw_duplicates(bus: Bus, topics: tuple[str, ...], accounts: list[str]) -> int:
    """How many records about these accounts repeated a message id already published (consumers drop them)."""
    seen: set[str] = set()
    repeats = 0
    mine = set(accounts)
    for topic, body in bus.received:
        if topic in topics and "message_id" in body and body.get("account_id") in mine:
            repeats += body["message_id"] in seen
            seen.add(body["message_id"])
    return repeats
