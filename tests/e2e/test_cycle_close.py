"""Cycle close over the real broker and database: one correct invoice per account and cycle."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from decimal import Decimal

import pytest

from contracts import messages as m
from tests import support
from tests.support import ADMIN, SCHEDULER, Bus, message, rows, scalar, wait_until

pytestmark = pytest.mark.stack
INVOICES = "billing.invoices"


async def open_account(bus: Bus, day: date = date(2026, 11, 1), billing_day: int = 1) -> str:
    return await support.open_account(bus, day, billing_day)


async def licensing(bus: Bus, model: type[m.Command], account: str, day: date, **fields) -> dict:
    sent = message(model, account, day, actor=ADMIN, **fields)
    await bus.send("licensing.commands", sent)
    [reply] = await bus.wait_count("licensing.events", 1, causation_id=str(sent.message_id))
    assert reply["type"] != "CommandRejected", reply
    return reply


def close_command(as_of: date, accounts: list[str]) -> m.CloseBillingCycles:
    return message(m.CloseBillingCycles, "platform", as_of, actor=SCHEDULER, as_of=as_of, account_ids=accounts)


async def invoice(bus: Bus, account: str, cycle_start: str) -> dict:
    [issued] = await bus.wait_count(INVOICES, 1, timeout=60, account_id=account, cycle_start=cycle_start)
    return issued


def lines_of(issued: dict, kind: str) -> list[tuple]:
    return sorted(
        (line.get("product"), line["quantity"], line["amount"], line["period_start"], line["period_end"], line["late"])
        for line in issued["lines"]
        if line["kind"] == kind
    )


async def test_a_month_with_purchases_a_removal_calls_and_a_device_gives_the_exact_invoice(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    await licensing(stack, m.PurchaseLicenses, account, date(2026, 11, 1), product="user", quantity=3)
    await licensing(stack, m.PurchaseLicenses, account, date(2026, 11, 16), product="room_phone", quantity=2)
    await licensing(stack, m.RemoveLicenses, account, date(2026, 11, 20), product="user", quantity=1)
    for cost in ("12.345678", "7.654322"):
        await stack.send(
            "usage.calls", message(m.CallCharged, account, date(2026, 11, 21), call_id=cost, cost=Decimal(cost))
        )
    device = message(
        m.DevicePurchased,
        account,
        date(2026, 11, 22),
        order_id="ord-1",
        sku="VVX-450",
        description="Desk phone",
        quantity=2,
        unit_price=Decimal("49.99"),
    )
    await stack.send("billing.charges", device)
    await stack.send("billing.charges", device)  # reported twice, charged once
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) = 2 from calls where account_id = :a", a=account)
    )
    await wait_until(
        lambda: scalar(dbs["cycle_close"], "select count(*) from device_orders where account_id = :a", a=account)
    )

    trigger = close_command(date(2026, 12, 1), [account])
    await stack.send("billing.commands", trigger)
    issued = await invoice(stack, account, "2026-11-01")

    assert lines_of(issued, "recurring") == [
        ("room_phone", 2, "30.00", "2026-12-01", "2027-01-01", False),
        ("user", 2, "30.00", "2026-12-01", "2027-01-01", False),
    ]
    assert lines_of(issued, "proration") == [
        ("room_phone", 2, "15.00", "2026-11-16", "2026-12-01", False),
        ("user", 3, "45.00", "2026-11-01", "2026-12-01", False),
    ]
    assert [line[2] for line in lines_of(issued, "calling_credits")] == ["20.00"]
    assert lines_of(issued, "device") == [(None, 2, "99.98", "2026-11-22", "2026-11-22", False)]
    assert issued["total"] == "239.98"
    assert (issued["issued_on"], issued["due_on"]) == ("2026-12-01", "2026-12-01")

    [removed] = await stack.wait_count("licensing.events", 1, account_id=account, type="LicensesRemoved")
    assert removed["quantity"] == 1 and removed["effective_on"] == "2026-12-01"
    assert removed["balance"]["purchased"] == 2 and removed["balance"]["scheduled_for_removal"] == 0
    [closed] = await stack.wait_count("billing.cycles", 1, account_id=account, type="BillingCycleClosed")
    assert (closed["next_cycle_start"], closed["next_cycle_end"]) == ("2026-12-01", "2027-01-01")

    again = close_command(date(2026, 12, 1), [account])
    await stack.send("billing.commands", again)
    await wait_until(
        lambda: scalar(dbs["cycle_close"], "select count(*) from inbox where message_id = :t", t=again.message_id)
    )
    assert await scalar(dbs["cycle_close"], "select count(*) from invoices where account_id = :a", a=account) == 1
    assert (
        await scalar(dbs["cycle_close"], "select count(*) from cycle_closes where trigger_id = :t", t=again.message_id)
        == 0
    )


async def test_late_usage_for_a_closed_cycle_lands_on_the_next_invoice(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    await stack.send(
        "usage.calls", message(m.CallCharged, account, date(2026, 11, 5), call_id="c1", cost=Decimal("3.00"))
    )
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) from calls where account_id = :a", a=account)
    )
    await stack.send("billing.commands", close_command(date(2026, 12, 1), [account]))
    november = await invoice(stack, account, "2026-11-01")

    late = message(m.CallCharged, account, date(2026, 11, 28), call_id="c2", cost=Decimal("4.005"))
    await stack.send("usage.calls", late)
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) = 2 from calls where account_id = :a", a=account)
    )
    await stack.send(
        "usage.calls", message(m.CallCharged, account, date(2026, 12, 3), call_id="c3", cost=Decimal("1.00"))
    )
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) = 3 from calls where account_id = :a", a=account)
    )
    await stack.send("billing.commands", close_command(date(2027, 1, 1), [account]))
    december = await invoice(stack, account, "2026-12-01")

    assert lines_of(november, "calling_credits") == [(None, 1, "3.00", "2026-11-01", "2026-12-01", False)]
    assert lines_of(december, "calling_credits") == [
        (None, 1, "1.00", "2026-12-01", "2027-01-01", False),
        (None, 1, "4.01", "2026-11-01", "2026-12-01", True),
    ]


async def test_a_missed_month_is_caught_up_cycle_by_cycle_oldest_first(stack: Bus, dbs) -> None:
    account = await open_account(stack, date(2026, 10, 15), billing_day=31)
    await licensing(stack, m.PurchaseLicenses, account, date(2026, 10, 15), product="user", quantity=1)
    await stack.send("billing.commands", close_command(date(2026, 12, 31), [account]))
    invoices = [await invoice(stack, account, start) for start in ("2026-09-30", "2026-10-31", "2026-11-30")]

    assert [(i["cycle_start"], i["cycle_end"]) for i in invoices] == [
        ("2026-09-30", "2026-10-31"),
        ("2026-10-31", "2026-11-30"),
        ("2026-11-30", "2026-12-31"),
    ]
    # 15.00 * 16 / 31 for Oct 15 - Oct 31, then one month in advance on each invoice.
    assert lines_of(invoices[0], "proration")[0][2] == "7.74"
    assert [i["total"] for i in invoices] == ["22.74", "15.00", "15.00"]


async def test_a_purchase_racing_the_close_lands_on_exactly_one_of_two_invoices(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    await licensing(stack, m.PurchaseLicenses, account, date(2026, 11, 2), product="user", quantity=1)
    racing = message(m.PurchaseLicenses, account, date(2026, 11, 30), actor=ADMIN, product="fax", quantity=1)
    await asyncio.gather(
        stack.send("licensing.commands", racing),
        stack.send("billing.commands", close_command(date(2026, 12, 1), [account])),
    )
    november = await invoice(stack, account, "2026-11-01")
    await stack.send("billing.commands", close_command(date(2027, 1, 1), [account]))
    december = await invoice(stack, account, "2026-12-01")

    fax = [
        (n, line)
        for n, issued in enumerate((november, december))
        for line in issued["lines"]
        if line.get("product") == "fax"
    ]
    prorations = {n for n, line in fax if line["kind"] == "proration"}
    assert len(prorations) == 1, fax  # on exactly one invoice
    # Either way the fax is billed once per license-day: Nov 30 (10.00 / 30), December, and January in advance.
    assert sum(Decimal(line["amount"]) for _, line in fax) == Decimal("20.33")


async def test_two_triggers_at_once_issue_one_invoice_per_account_and_cycle(stack: Bus, dbs) -> None:
    accounts = [await open_account(stack) for _ in range(5)]
    for account in accounts:
        await licensing(stack, m.PurchaseLicenses, account, date(2026, 11, 10), product="user", quantity=2)
    first = close_command(date(2026, 12, 1), accounts)
    second = message(
        m.CloseBillingCycles,
        "operator-desk",
        date(2026, 12, 1),
        actor=SCHEDULER.model_copy(update={"role": "operator"}),
        as_of=date(2026, 12, 1),
        account_ids=accounts,
    )
    await asyncio.gather(stack.send("billing.commands", first), stack.send("billing.commands", second))
    for account in accounts:
        await invoice(stack, account, "2026-11-01")
    for trigger in (first, second):
        await wait_until(
            lambda t=trigger: scalar(  # type: ignore[misc]
                dbs["cycle_close"], "select count(*) from inbox where message_id = :t", t=t.message_id
            )
        )

    counts = await rows(
        dbs["cycle_close"],
        "select account_id, count(*) from invoices where account_id = any(:a) group by 1",
        a=accounts,
    )
    assert sorted(c for _, c in counts) == [1] * 5
    assert len([i for i in stack.matching(INVOICES) if i["account_id"] in accounts]) == 5


async def test_a_trigger_closes_its_accounts_chunk_by_chunk_all_under_its_own_id(stack: Bus, dbs) -> None:
    # The test workers close 2 accounts per transaction (tests/conftest.py): 5 accounts take the
    # trigger and two continuations of it.
    accounts = [await open_account(stack) for _ in range(5)]
    trigger = close_command(date(2026, 12, 1), accounts)
    await stack.send("billing.commands", trigger)
    for account in accounts:
        await invoice(stack, account, "2026-11-01")

    chunks = await rows(
        dbs["cycle_close"], "select message_id, finished from close_chunks where trigger_id = :t", t=trigger.message_id
    )
    assert sorted(finished for _, finished in chunks) == [False, False, True]
    assert trigger.message_id in {message_id for message_id, _ in chunks}
    requested = await rows(
        dbs["cycle_close"], "select distinct trigger_id from cycle_closes where account_id = any(:a)", a=accounts
    )
    assert requested == [(trigger.message_id,)]
    closing = [e for e in stack.matching("billing.cycles", type="BillingCycleClosing") if e["account_id"] in accounts]
    assert len(closing) == 5 and {e["causation_id"] for e in closing} == {str(trigger.message_id)}


async def test_an_office_admin_cannot_trigger_a_close(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    attempt = message(
        m.CloseBillingCycles, "platform", date(2026, 12, 1), actor=ADMIN, as_of=date(2026, 12, 1), account_ids=[account]
    )
    await stack.send("billing.commands", attempt)
    [rejected] = await stack.wait_count("billing.cycles", 1, causation_id=str(attempt.message_id))

    assert rejected["reason_code"] == "not_authorized"
    assert await scalar(dbs["cycle_close"], "select count(*) from cycle_closes where account_id = :a", a=account) == 0
    _ = uuid
