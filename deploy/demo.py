"""A short demo of the article's flows, end to end through Kafka and the three running workers.

An office admin buys user licenses mid-cycle (prorated), over-invites, schedules a removal and
takes it back; calls accrue up to the 250.00 USD cap with alerts and a block; support raises
the cap; a desk-phone order comes in; the scheduler closes the cycle (``billing close-cycles``)
and the operators' command shows the invoice and the account (``billing invoice``, ``billing account``).
At the end it waits until the alert board (``BILLING_BOARD_URL``, default http://127.0.0.1:8800)
shows the account's alerts, and prints the page's address.
Run by ``scripts/start``; ``python -m deploy.demo`` works when the workers already run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time as clock
import urllib.error
import urllib.request
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from contracts import Actor
from contracts import messages as m
from deploy.client import Bus
from deploy.credentials import env_for

ADMIN = Actor(id="admin@acme", role="office_admin")
PROVISIONING = Actor(id="provisioning", role="service")
SUPPORT = Actor(id="support@phone.example", role="support")
OUTPUTS = ["licensing.events", "metering.alerts", "billing.invoices", "billing.cycles"]
BOARD_URL = os.environ.get("BILLING_BOARD_URL", "http://127.0.0.1:8800").rstrip("/")


class Demo:
    def __init__(self, bus: Bus, account: str) -> None:
        self.bus = bus
        self.account = account

    def message(self, model: type[Any], day: date, **fields: Any) -> Any:
        return model(
            message_id=uuid.uuid4(), account_id=self.account, occurred_at=datetime.combine(day, time(12), UTC), **fields
        )

    async def ask(self, topic: str, model: type[Any], day: date, **fields: Any) -> dict[str, Any]:
        sent = self.message(model, day, **fields)
        await self.bus.send(topic, sent)
        reply_topic = {"licensing.commands": "licensing.events", "metering.commands": "metering.alerts"}[topic]
        replies = await self.bus.wait_count(reply_topic, 1, timeout=60, causation_id=str(sent.message_id))
        return replies[0]


async def billing(*args: str, principal: str = "operator") -> None:
    """Run the operators' command (``billing``, installed with the project) as an operator would:
    with the operator's credentials and signing key (or ``principal``'s, the scheduler's for its cron job)."""
    env = {**os.environ, **env_for(principal)}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "billing_cli", *args, env=env)
    if await process.wait() != 0:
        raise SystemExit(f"billing {' '.join(args)} failed with exit code {process.returncode}")


def show(title: str, reply: dict[str, Any], *fields: str) -> None:
    if reply["type"] == "CommandRejected":
        print(f"  {title}: REFUSED ({reply['reason_code']}): {reply['reason']}")
        return
    details = ", ".join(f"{f}={reply[f]}" for f in fields)
    print(f"  {title}: {reply['type']} {details}")


async def run() -> None:
    bus = Bus(OUTPUTS)
    await bus.start()
    account = f"acme-{uuid.uuid4().hex[:6]}"
    demo = Demo(bus, account)
    try:
        print(f"\n== Account {account} opens on 2026-11-01 (billing day 1)")
        await bus.send("platform.accounts", demo.message(m.AccountOpened, date(2026, 11, 1), billing_day=1))

        print("\n== Purchase: the office admin buys 2 user licenses on Nov 16 (price 15.00)")
        nov16 = date(2026, 11, 16)
        lic = "licensing.commands"
        for _ in range(30):  # the account may take a moment to reach license orders
            preview = await demo.ask(lic, m.PreviewLicensePurchase, nov16, actor=ADMIN, product="user", quantity=2)
            if preview.get("reason_code") != "unknown_account":
                break
            await asyncio.sleep(0.2)
        show("preview", preview, "prorated_amount", "recurring_amount_per_cycle", "cycle_start", "cycle_end")
        bought = await demo.ask(lic, m.PurchaseLicenses, nov16, actor=ADMIN, product="user", quantity=2)
        show("confirm", bought, "prorated_amount", "balance")

        print("\n== Seats: provisioning invites 3 team members against 2 licenses")
        for person in ("ann", "bob", "cy"):
            reply = await demo.ask(lic, m.AssignLicense, nov16, actor=PROVISIONING, product="user", assignee_id=person)
            show(f"assign {person}", reply, "balance")

        print("\n== Remove and restore: 1 unassigned room phone of 2 goes at cycle end, then is taken back")
        await demo.ask(lic, m.PurchaseLicenses, nov16, actor=ADMIN, product="room_phone", quantity=2)
        removal = await demo.ask(
            lic, m.RemoveLicenses, date(2026, 11, 20), actor=ADMIN, product="room_phone", quantity=1
        )
        show("remove 1", removal, "effective_on", "balance")
        restore = await demo.ask(
            lic, m.PurchaseLicenses, date(2026, 11, 21), actor=ADMIN, product="room_phone", quantity=1
        )
        show("buy 1 again", restore, "quantity_restored", "prorated_amount", "balance")

        print("\n== Calling credits: 26 calls of 10.00 against the 250.00 cap")
        for n in range(26):
            await bus.send(
                "usage.calls",
                demo.message(m.CallCharged, date(2026, 11, 22), call_id=f"call-{n}", cost=Decimal("10.00")),
            )
        await bus.wait_count("metering.alerts", 1, timeout=60, account_id=account, type="CallingBlocked")
        for alert in bus.matching("metering.alerts", account_id=account):
            print(
                f"  {alert['type']} {alert.get('threshold_percent', '')} accrued={alert['accrued']} cap={alert['cap']}"
            )
        raised = await demo.ask(
            "metering.commands", m.SetCallingCreditCap, date(2026, 11, 23), actor=SUPPORT, cap=Decimal("400.00")
        )
        show("support raises the cap", raised, "cap", "accrued")
        [unblocked] = await bus.wait_count("metering.alerts", 1, account_id=account, type="CallingUnblocked")
        show("  then", unblocked, "reason")

        print("\n== Hardware store: 2 desk phones at 49.99")
        await bus.send(
            "billing.charges",
            demo.message(
                m.DevicePurchased,
                date(2026, 11, 24),
                order_id="order-7",
                sku="VVX-450",
                description="Desk phone",
                quantity=2,
                unit_price=Decimal("49.99"),
            ),
        )
        await asyncio.sleep(1)

        print("\n== The scheduler closes every cycle ending by 2026-12-01 (billing close-cycles, as its cron job)")
        # As the cron job runs it: the scheduler's key, which may claim service; it does not wait.
        await billing(
            "close-cycles", "--as-of", "2026-12-01", "--account", account, "--actor", "scheduler", "--role", "service",
            "--no-wait", principal="scheduler",
        )  # fmt: skip
        [invoice] = await bus.wait_count("billing.invoices", 1, timeout=60, account_id=account)
        print(f"\n== The invoice as issued (billing invoice {invoice['invoice_id']})")
        await billing("invoice", invoice["invoice_id"])
        await bus.wait_count("billing.cycles", 1, account_id=account, type="BillingCycleClosed")
        print(f"\n== The account now (billing account {account})")
        await billing("account", account)
        await on_the_board(account, len(bus.matching("metering.alerts", account_id=account)))
    finally:
        await bus.stop()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


async def on_the_board(account: str, alerts: int, timeout_s: float = 30.0) -> None:
    """Wait until the alert board has recorded the account's alerts and its cycle close."""
    print("\n== The alert board (operations)")
    deadline = clock.monotonic() + timeout_s
    while True:
        try:
            shown = await asyncio.to_thread(_get_json, f"{BOARD_URL}/api/accounts/{account}")
            recorded = sum(len(cycle["alerts"]) for cycle in shown["cycles"])
            if recorded >= alerts and (shown["standing"] or {}).get("cycle_start") == "2026-12-01":
                print(f"  {recorded} alerts of {account} on the board: {BOARD_URL}/?account={account}")
                return
        except (urllib.error.URLError, OSError, ValueError):
            pass  # not up yet, or the account not there yet (404)
        if clock.monotonic() > deadline:
            print(f"  the alert board at {BOARD_URL} did not show them within {timeout_s:.0f} s (is it running?)")
            return
        await asyncio.sleep(0.2)


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
