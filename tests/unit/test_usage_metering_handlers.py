"""Usage metering's handlers on an in-memory store: calls crossing thresholds, caps, seals, no I/O."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from contracts import messages as m
from services.usage_metering import handlers
from services.usage_metering.settings import Settings
from tests.support import SUPPORT, message
from tests.unit.fakes import FakeMeterStore, FakeUnit

NOV = date(2026, 11, 1)
DEC = date(2026, 12, 1)


def a_unit() -> FakeUnit:
    return FakeUnit(FakeMeterStore(), Settings())


async def opened(unit: FakeUnit, account: str = "acme") -> str:
    await handlers.account_opened(unit, message(m.AccountOpened, account, NOV, billing_day=1))
    return account


def call(account: str, call_id: str, cost: str, day: date = date(2026, 11, 5)) -> m.CallCharged:
    return message(m.CallCharged, account, day, call_id=call_id, cost=cost)


async def test_calls_crossing_50_and_80_percent_of_the_cap_alert_once_each() -> None:
    unit = a_unit()
    account = await opened(unit)  # the default cap: 250.00

    await handlers.calls_charged(unit, [call(account, "c1", "100.00"), call(account, "c2", "30.00")])
    await handlers.calls_charged(unit, [call(account, "c3", "75.00"), call(account, "c4", "1.00")])

    reached = unit.events(m.CallingCreditThresholdReached)
    assert [(a.threshold_percent, a.accrued) for a in reached] == [(50, Decimal("130.00")), (80, Decimal("205.00"))]
    assert unit.events(m.CallingBlocked) == []
    assert unit.store.meter(account, NOV).billable == Decimal("206.00")


async def test_a_call_reaching_the_cap_blocks_calling() -> None:
    unit = a_unit()
    account = await opened(unit)

    await handlers.calls_charged(unit, [call(account, "c1", "260.00")])

    assert [a.threshold_percent for a in unit.events(m.CallingCreditThresholdReached)] == [50, 80, 100]
    assert len(unit.events(m.CallingBlocked)) == 1
    meter = unit.store.meter(account, NOV)
    assert meter.blocked and (meter.billable, meter.over_cap) == (Decimal("250.00"), Decimal("10.00"))


async def test_a_call_reported_twice_is_charged_once() -> None:
    unit = a_unit()
    account = await opened(unit)

    await handlers.calls_charged(unit, [call(account, "c1", "10.00"), call(account, "c1", "10.00")])
    await handlers.calls_charged(unit, [call(account, "c1", "10.00")])

    assert unit.store.meter(account, NOV).billable == Decimal("10.00")


async def test_calls_for_an_account_not_open_are_charged_when_it_opens() -> None:
    unit = a_unit()

    await handlers.calls_charged(unit, [call("newcomer", "c1", "5.00")])
    assert [topic for topic, _ in unit.parked] == ["usage.calls"]

    await opened(unit, "newcomer")
    assert unit.store.meter("newcomer", NOV).billable == Decimal("5.00")
    assert unit.parked == []


async def test_raising_the_cap_above_the_accrual_unblocks_calling() -> None:
    unit = a_unit()
    account = await opened(unit)
    await handlers.calls_charged(unit, [call(account, "c1", "260.00")])

    await handlers.set_cap(unit, message(m.SetCallingCreditCap, account, date(2026, 11, 6), SUPPORT, cap="400.00"))

    [changed] = unit.events(m.CallingCreditCapChanged)
    assert changed.cap == Decimal("400.00")
    assert [u.reason for u in unit.events(m.CallingUnblocked)] == ["cap_raised"]
    assert not unit.store.meter(account, NOV).blocked


async def test_a_seal_reports_the_accrual_and_starts_the_next_cycle_unblocked() -> None:
    unit = a_unit()
    account = await opened(unit)
    await handlers.calls_charged(unit, [call(account, "c1", "260.00")])
    request = message(m.BillingCycleClosing, account, DEC, cycle_start=NOV, cycle_end=DEC)

    await handlers.seal_cycles(unit, [request])

    [sealed] = unit.events(m.UsageCycleSealed)
    assert (sealed.accrued, sealed.over_cap, sealed.cap) == (Decimal("250.00"), Decimal("10.00"), Decimal("250.00"))
    assert [u.reason for u in unit.events(m.CallingUnblocked)] == ["new_cycle"]
    assert unit.store.accounts_by_id[account].open_cycle.start == DEC


async def test_a_late_call_is_reported_with_the_next_seal() -> None:
    unit = a_unit()
    account = await opened(unit)
    await handlers.seal_cycles(unit, [message(m.BillingCycleClosing, account, DEC, cycle_start=NOV, cycle_end=DEC)])

    await handlers.calls_charged(unit, [call(account, "late", "3.50", date(2026, 11, 30))])
    await handlers.seal_cycles(
        unit, [message(m.BillingCycleClosing, account, date(2027, 1, 1), cycle_start=DEC, cycle_end=date(2027, 1, 1))]
    )

    [_, second] = unit.events(m.UsageCycleSealed)
    assert [(line.cycle_start, line.amount) for line in second.late] == [(NOV, Decimal("3.50"))]


async def test_a_repeated_seal_request_is_answered_with_the_same_event() -> None:
    unit = a_unit()
    account = await opened(unit)
    request = message(m.BillingCycleClosing, account, DEC, cycle_start=NOV, cycle_end=DEC)
    await handlers.seal_cycles(unit, [request])

    await handlers.seal_cycles(unit, [request])

    first, again = unit.events(m.UsageCycleSealed)
    assert again == first


async def test_with_metrics_on_a_batch_counts_its_alerts_calls_and_exact_amounts(monkeypatch) -> None:
    monkeypatch.setattr(handlers.metrics, "enabled", True)
    unit = a_unit()
    account = await opened(unit)

    await handlers.calls_charged(unit, [call(account, "c1", "200.10"), call(account, "c1", "200.10")])
    await handlers.calls_charged(unit, [call(account, "c2", "60.05")])

    counted = [(counter, amount) for counter, amount in unit.counted]
    assert (handlers.ALERTS_SENT["threshold_50"], 1) in counted and (handlers.ALERTS_SENT["blocked"], 1) in counted
    assert sum(n for c, n in counted if c is handlers.CALLS_ACCRUED) == 2  # the repeat is not a call
    assert sum((a for c, a in counted if c is handlers.BILLABLE_USD), Decimal(0)) == Decimal("250.00")
    assert sum((a for c, a in counted if c is handlers.OVER_CAP_USD), Decimal(0)) == Decimal("10.15")
