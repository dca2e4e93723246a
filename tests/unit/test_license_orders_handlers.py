"""License orders' handlers on an in-memory store: purchases, assignments and seals, no I/O."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from contracts import messages as m
from services.license_orders import handlers
from services.license_orders.settings import Settings
from shared.rejections import Rejected
from tests.support import ADMIN, message
from tests.unit.fakes import FakeLicenseStore, FakeUnit

NOV = date(2026, 11, 1)
DEC = date(2026, 12, 1)


async def opened(unit: FakeUnit, account: str = "acme") -> str:
    await handlers.account_opened(unit, message(m.AccountOpened, account, NOV, billing_day=1))
    return account


def a_unit() -> FakeUnit:
    return FakeUnit(FakeLicenseStore(), Settings())


def closing(account: str, start: date = NOV, end: date = DEC) -> m.BillingCycleClosing:
    return message(m.BillingCycleClosing, account, end, cycle_start=start, cycle_end=end)


async def test_a_purchase_in_mid_cycle_charges_the_rest_of_the_cycle_and_adds_the_licenses() -> None:
    unit = a_unit()
    account = await opened(unit)

    await handlers.purchase(
        unit, message(m.PurchaseLicenses, account, date(2026, 11, 16), ADMIN, product="user", quantity=3)
    )

    [bought] = unit.events(m.LicensesPurchased)
    assert bought.prorated_amount == Decimal("22.50")  # 3 x 15.00 x 15 of 30 days
    assert (bought.balance.purchased, bought.balance.available) == (3, 3)


async def test_a_purchase_for_an_account_not_open_is_rejected() -> None:
    unit = a_unit()
    with pytest.raises(Rejected) as rejected:
        await handlers.purchase(unit, message(m.PurchaseLicenses, "nobody", NOV, ADMIN, product="user", quantity=1))
    assert rejected.value.reason_code == "unknown_account"


async def test_assigning_a_license_takes_one_of_those_available() -> None:
    unit = a_unit()
    account = await opened(unit)
    await handlers.purchase(unit, message(m.PurchaseLicenses, account, NOV, ADMIN, product="user", quantity=2))

    await handlers.assign(unit, message(m.AssignLicense, account, NOV, ADMIN, product="user", assignee_id="ann"))

    [assigned] = unit.events(m.LicenseAssigned)
    assert (assigned.balance.assigned, assigned.balance.available) == (1, 1)


async def test_assigning_when_no_license_is_free_is_rejected() -> None:
    unit = a_unit()
    account = await opened(unit)
    await handlers.purchase(unit, message(m.PurchaseLicenses, account, NOV, ADMIN, product="user", quantity=1))
    await handlers.assign(unit, message(m.AssignLicense, account, NOV, ADMIN, product="user", assignee_id="ann"))

    with pytest.raises(Rejected):
        await handlers.assign(unit, message(m.AssignLicense, account, NOV, ADMIN, product="user", assignee_id="bob"))


async def test_a_seal_charges_the_licenses_kept_for_the_next_cycle_and_applies_the_removals_due() -> None:
    unit = a_unit()
    account = await opened(unit)
    await handlers.purchase(unit, message(m.PurchaseLicenses, account, NOV, ADMIN, product="user", quantity=5))
    await handlers.remove(
        unit, message(m.RemoveLicenses, account, date(2026, 11, 10), ADMIN, product="user", quantity=2)
    )

    await handlers.seal_cycles(unit, [closing(account)])

    [removed] = unit.events(m.LicensesRemoved)
    assert (removed.quantity, removed.balance.purchased) == (2, 3)
    [sealed] = unit.events(m.LicenseCycleSealed)
    [recurring] = sealed.recurring
    assert (recurring.quantity, recurring.unit_price, recurring.amount) == (3, Decimal("15.00"), Decimal("45.00"))
    assert (recurring.period_start, recurring.period_end) == (DEC, date(2027, 1, 1))
    assert [p.amount for p in sealed.prorations] == [Decimal("75.00")]
    assert unit.store.accounts[account].open_cycle.start == DEC


async def test_a_repeated_seal_request_is_answered_with_the_same_event_and_changes_nothing() -> None:
    unit = a_unit()
    account = await opened(unit)
    await handlers.purchase(unit, message(m.PurchaseLicenses, account, NOV, ADMIN, product="user", quantity=1))
    request = closing(account)
    await handlers.seal_cycles(unit, [request])
    first = unit.events(m.LicenseCycleSealed)

    await handlers.seal_cycles(unit, [request])

    assert unit.events(m.LicenseCycleSealed) == first * 2
    assert unit.store.accounts[account].open_cycle.start == DEC


async def test_a_seal_request_for_an_account_not_open_waits_until_it_opens() -> None:
    unit = a_unit()
    request = closing("late-opener")

    await handlers.seal_cycles(unit, [request])
    assert unit.events() == []
    assert unit.parked == [("billing.cycles", request)]

    await opened(unit, "late-opener")
    [sealed] = unit.events(m.LicenseCycleSealed)
    assert (sealed.cycle_start, sealed.recurring, sealed.prorations) == (NOV, [], [])


async def test_a_seal_request_for_a_cycle_other_than_the_open_one_is_an_error() -> None:
    unit = a_unit()
    account = await opened(unit)
    with pytest.raises(ValueError, match="open"):
        await handlers.seal_cycles(unit, [closing(account, DEC, date(2027, 1, 1))])
