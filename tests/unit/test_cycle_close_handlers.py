"""Cycle close's handlers on an in-memory store: triggers, seals' reports and invoices, no I/O."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from contracts import messages as m
from services.cycle_close import handlers
from services.cycle_close.settings import Settings
from tests.support import SCHEDULER, message
from tests.unit.fakes import FakeCloseStore, FakeUnit

NOV = date(2026, 11, 1)
DEC = date(2026, 12, 1)


def a_unit(chunk: int = 5000) -> FakeUnit:
    return FakeUnit(FakeCloseStore(), Settings(close_chunk_accounts=chunk))


async def opened(unit: FakeUnit, account: str) -> str:
    await handlers.account_opened(unit, message(m.AccountOpened, account, NOV, billing_day=1))
    return account


def trigger(as_of: date = DEC) -> m.CloseBillingCycles:
    return message(m.CloseBillingCycles, "operator", as_of, SCHEDULER, as_of=as_of)


def license_seal(request: m.BillingCycleClosing) -> m.LicenseCycleSealed:
    recurring = m.RecurringCharge(
        product="user",
        quantity=2,
        unit_price=Decimal("15.00"),
        amount=Decimal("30.00"),
        period_start=DEC,
        period_end=date(2027, 1, 1),
    )
    return m.LicenseCycleSealed.caused_by(
        request, cycle_start=request.cycle_start, cycle_end=request.cycle_end, recurring=[recurring], prorations=[]
    )


def usage_seal(request: m.BillingCycleClosing) -> m.UsageCycleSealed:
    return m.UsageCycleSealed.caused_by(
        request,
        cycle_start=request.cycle_start,
        cycle_end=request.cycle_end,
        cap=Decimal("250.00"),
        accrued=Decimal("12.345"),
        over_cap=Decimal("0"),
    )


async def test_a_trigger_asks_every_account_due_to_seal_its_cycle() -> None:
    unit = a_unit()
    await opened(unit, "a1")
    await opened(unit, "a2")

    await handlers.close_cycles(unit, trigger())

    asked = unit.events(m.BillingCycleClosing)
    assert [(r.account_id, r.cycle_start, r.cycle_end) for r in asked] == [("a1", NOV, DEC), ("a2", NOV, DEC)]


async def test_a_full_chunk_hands_the_rest_to_a_continuation_of_the_trigger() -> None:
    unit = a_unit(chunk=1)
    await opened(unit, "a1")
    await opened(unit, "a2")
    first = trigger()

    await handlers.close_cycles(unit, first)
    [continuation] = unit.events(m.CloseBillingCycles)
    await handlers.close_cycles(unit, continuation)

    asked = unit.events(m.BillingCycleClosing)
    assert [r.account_id for r in asked] == ["a1", "a2"]
    assert {r.causation_id for r in asked} == {first.message_id}


async def test_both_seals_in_issue_one_invoice_with_every_line() -> None:
    unit = a_unit()
    await opened(unit, "a1")
    await handlers.close_cycles(unit, trigger())
    [request] = unit.events(m.BillingCycleClosing)

    await handlers.licenses_sealed(unit, [license_seal(request)])
    assert unit.events(m.InvoiceIssued) == []
    await handlers.usage_sealed(unit, [usage_seal(request)])

    [invoice] = unit.events(m.InvoiceIssued)
    assert [(line.kind, line.amount) for line in invoice.lines] == [
        ("recurring", Decimal("30.00")),
        ("calling_credits", Decimal("12.35")),
    ]
    assert invoice.total == Decimal("42.35")
    [closed] = unit.events(m.BillingCycleClosed)
    assert (closed.next_cycle_start, closed.next_cycle_end) == (DEC, date(2027, 1, 1))


async def test_a_seal_reported_again_issues_no_second_invoice() -> None:
    unit = a_unit()
    await opened(unit, "a1")
    await handlers.close_cycles(unit, trigger())
    [request] = unit.events(m.BillingCycleClosing)
    await handlers.licenses_sealed(unit, [license_seal(request)])
    await handlers.usage_sealed(unit, [usage_seal(request)])

    await handlers.usage_sealed(unit, [usage_seal(request)])

    assert len(unit.events(m.InvoiceIssued)) == 1


async def test_a_device_bought_in_the_cycle_is_on_its_invoice() -> None:
    unit = a_unit()
    await opened(unit, "a1")
    device = message(
        m.DevicePurchased,
        "a1",
        date(2026, 11, 20),
        order_id="o1",
        sku="desk-phone",
        description="Desk phone",
        quantity=2,
        unit_price="99.00",
    )
    await handlers.device_purchased(unit, device)
    await handlers.close_cycles(unit, trigger())
    [request] = unit.events(m.BillingCycleClosing)

    await handlers.licenses_sealed(unit, [license_seal(request)])
    await handlers.usage_sealed(unit, [usage_seal(request)])

    [invoice] = unit.events(m.InvoiceIssued)
    assert ("device", Decimal("198.00")) in [(line.kind, line.amount) for line in invoice.lines]


async def test_a_seal_for_a_cycle_nobody_asked_to_close_is_an_error() -> None:
    unit = a_unit()
    await opened(unit, "a1")
    request = message(m.BillingCycleClosing, "a1", DEC, cycle_start=NOV, cycle_end=DEC)
    with pytest.raises(ValueError, match="nobody asked"):
        await handlers.usage_sealed(unit, [usage_seal(request)])
