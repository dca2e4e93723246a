"""Invoice assembly at cycle close: one line per charge, amounts to the cent, total = sum of lines."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import messages as m
from services.cycle_close import domain
from services.cycle_close.domain import DeviceOrder
from shared.cycles import Cycle
from shared.rejections import Rejected

D = date
OCTOBER = Cycle(D(2026, 10, 1), D(2026, 11, 1))
NOVEMBER = Cycle(D(2026, 11, 1), D(2026, 12, 1))
DECEMBER = Cycle(D(2026, 12, 1), D(2027, 1, 1))
ACCOUNT = "acct-1"


def licenses_sealed(
    recurring: list[m.RecurringCharge] | None = None,
    prorations: list[m.ProrationCharge] | None = None,
    cycle: Cycle = NOVEMBER,
) -> m.LicenseCycleSealed:
    return m.LicenseCycleSealed(
        message_id=uuid.uuid4(),
        account_id=ACCOUNT,
        occurred_at=datetime(2026, 12, 1, 0, 5, tzinfo=UTC),
        cycle_start=cycle.start,
        cycle_end=cycle.end,
        recurring=recurring or [],
        prorations=prorations or [],
    )


def usage_sealed(
    accrued: str = "0", late: list[m.LateUsage] | None = None, cycle: Cycle = NOVEMBER
) -> m.UsageCycleSealed:
    return m.UsageCycleSealed(
        message_id=uuid.uuid4(),
        account_id=ACCOUNT,
        occurred_at=datetime(2026, 12, 1, 0, 5, tzinfo=UTC),
        cycle_start=cycle.start,
        cycle_end=cycle.end,
        cap=Decimal("250.00"),
        accrued=Decimal(accrued),
        over_cap=Decimal("0"),
        late=late or [],
    )


def recurring(product: m.Product = "user", quantity: int = 5, unit_price: str = "15.00") -> m.RecurringCharge:
    price = Decimal(unit_price)
    return m.RecurringCharge(
        product=product,
        quantity=quantity,
        unit_price=price,
        amount=price * quantity,
        period_start=DECEMBER.start,
        period_end=DECEMBER.end,
    )


def proration(
    amount: str, quantity: int = 2, start: date = D(2026, 11, 16), end: date = NOVEMBER.end, late: bool = False
) -> m.ProrationCharge:
    return m.ProrationCharge(
        purchase_id=uuid.uuid4(),
        product="user",
        quantity=quantity,
        unit_price=Decimal("15.00"),
        amount=Decimal(amount),
        period_start=start,
        period_end=end,
        late=late,
    )


def device(quantity: int = 2, unit_price: str = "49.99", ordered_on: date = D(2026, 11, 20)) -> DeviceOrder:
    return DeviceOrder(
        order_id="ord-1",
        sku="VVX-450",
        description="Poly VVX 450 desk phone",
        quantity=quantity,
        unit_price=Decimal(unit_price),
        ordered_on=ordered_on,
    )


def lines_for(
    licenses: m.LicenseCycleSealed | None = None,
    usage: m.UsageCycleSealed | None = None,
    devices: list[DeviceOrder] | None = None,
) -> list[m.InvoiceLine]:
    return domain.invoice_lines(NOVEMBER, licenses or licenses_sealed(), usage or usage_sealed(), devices or [])


def test_a_cycle_with_nothing_to_bill_has_no_lines_and_totals_zero():
    lines = lines_for()

    assert lines == []
    assert domain.total(lines) == Decimal("0.00")


def test_recurring_bills_the_licenses_kept_for_the_next_cycle_in_advance():
    (line,) = lines_for(licenses_sealed(recurring=[recurring("user", 5, "15.00")]))

    assert line.kind == "recurring"
    assert line.product == "user"
    assert line.quantity == 5
    assert line.unit_price == Decimal("15.00")
    assert line.amount == Decimal("75.00")
    assert (line.period_start, line.period_end) == (DECEMBER.start, DECEMBER.end)
    assert not line.late


def test_one_recurring_line_per_product():
    lines = lines_for(licenses_sealed(recurring=[recurring("user", 5), recurring("fax", 1, "5.00")]))

    assert [(line.product, line.amount) for line in lines] == [("user", Decimal("75.00")), ("fax", Decimal("5.00"))]


def test_a_recurring_amount_with_a_sub_cent_price_is_rounded_half_up():
    # a per-account price override of 9.995 for 3 licenses: 29.985 -> 29.99
    (line,) = lines_for(licenses_sealed(recurring=[recurring("room_phone", 3, "9.995")]))

    assert line.amount == Decimal("29.99")


def test_one_proration_line_per_purchase_keeping_the_late_flag():
    on_time = proration("15.00")
    late_own = proration("11.61", start=D(2026, 10, 20), end=OCTOBER.end, late=True)
    late_full = proration("30.00", start=NOVEMBER.start, end=NOVEMBER.end, late=True)

    lines = lines_for(licenses_sealed(prorations=[on_time, late_own, late_full]))

    assert [(line.kind, line.amount, line.late) for line in lines] == [
        ("proration", Decimal("15.00"), False),
        ("proration", Decimal("11.61"), True),
        ("proration", Decimal("30.00"), True),
    ]
    assert (lines[1].period_start, lines[1].period_end) == (D(2026, 10, 20), OCTOBER.end)
    assert "late" in lines[1].description
    assert "late" not in lines[0].description
    assert all(line.product == "user" and line.quantity == 2 for line in lines)


def test_calling_credits_are_billed_rounded_half_up_to_the_cent():
    (line,) = lines_for(usage=usage_sealed("123.455"))

    assert line.kind == "calling_credits"
    assert line.amount == Decimal("123.46")
    assert (line.period_start, line.period_end) == (NOVEMBER.start, NOVEMBER.end)
    assert not line.late


def test_calling_credits_just_below_half_a_cent_round_down():
    (line,) = lines_for(usage=usage_sealed("123.454999"))

    assert line.amount == Decimal("123.45")


@pytest.mark.parametrize("accrued", ["0", "0.000000", "0.004999"])
def test_no_calling_credits_line_when_nothing_billable_accrued(accrued):
    assert lines_for(usage=usage_sealed(accrued)) == []


def test_late_usage_gets_its_own_line_marked_late_with_its_original_cycle():
    late = m.LateUsage(cycle_start=OCTOBER.start, cycle_end=OCTOBER.end, amount=Decimal("12.345"))

    lines = lines_for(usage=usage_sealed("40.00", late=[late]))

    assert [(line.kind, line.amount, line.late) for line in lines] == [
        ("calling_credits", Decimal("40.00"), False),
        ("calling_credits", Decimal("12.35"), True),
    ]
    assert (lines[1].period_start, lines[1].period_end) == (OCTOBER.start, OCTOBER.end)


def test_a_device_line_charges_unit_price_times_quantity():
    (line,) = lines_for(devices=[device(2, "49.99")])

    assert line.kind == "device"
    assert line.quantity == 2
    assert line.unit_price == Decimal("49.99")
    assert line.amount == Decimal("99.98")
    assert "ord-1" in line.description
    assert not line.late


def test_a_device_amount_is_rounded_half_up_to_the_cent():
    (line,) = lines_for(devices=[device(3, "0.125")])  # 0.375

    assert line.amount == Decimal("0.38")


def test_a_device_ordered_before_the_cycle_is_marked_late():
    (line,) = lines_for(devices=[device(1, "89.00", ordered_on=D(2026, 10, 31))])

    assert line.late
    assert line.amount == Decimal("89.00")


def test_the_total_is_the_sum_of_every_line():
    lines = lines_for(
        licenses_sealed(
            recurring=[recurring("user", 5, "15.00"), recurring("fax", 2, "5.00")],
            prorations=[proration("15.00"), proration("11.61", start=D(2026, 10, 20), end=OCTOBER.end, late=True)],
        ),
        usage_sealed(
            "123.455", late=[m.LateUsage(cycle_start=OCTOBER.start, cycle_end=OCTOBER.end, amount=Decimal("1.005"))]
        ),
        [device(2, "49.99")],
    )

    assert [line.kind for line in lines] == [
        "recurring",
        "recurring",
        "proration",
        "proration",
        "calling_credits",
        "calling_credits",
        "device",
    ]
    # 75.00 + 10.00 + 15.00 + 11.61 + 123.46 + 1.01 + 99.98
    assert domain.total(lines) == Decimal("336.06")


amounts = st.decimals(min_value=0, max_value=100_000, places=6)


@settings(max_examples=200, deadline=None)
@given(
    recurring_prices=st.lists(st.decimals(min_value=0, max_value=500, places=3), max_size=4),
    proration_amounts=st.lists(amounts, max_size=4),
    accrued=amounts,
    late_amounts=st.lists(st.decimals(min_value=Decimal("0.01"), max_value=100_000, places=6), max_size=3),
    device_prices=st.lists(st.decimals(min_value=0, max_value=5_000, places=3), max_size=3),
)
def test_every_line_is_in_cents_and_the_total_is_their_sum(
    recurring_prices, proration_amounts, accrued, late_amounts, device_prices
):
    lines = lines_for(
        licenses_sealed(
            recurring=[recurring("user", 3, str(p)) for p in recurring_prices],
            prorations=[proration(str(a)) for a in proration_amounts],
        ),
        usage_sealed(
            str(accrued),
            late=[m.LateUsage(cycle_start=OCTOBER.start, cycle_end=OCTOBER.end, amount=a) for a in late_amounts],
        ),
        [device(4, str(p)) for p in device_prices],
    )

    assert domain.total(lines) == sum((line.amount for line in lines), Decimal(0))
    for line in lines:
        assert line.amount == line.amount.quantize(Decimal("0.01"))
        assert line.amount >= 0
    expected_count = len(recurring_prices) + len(proration_amounts) + len(late_amounts) + len(device_prices)
    expected_count += 1 if accrued >= Decimal("0.005") else 0
    assert len(lines) == expected_count


# ------------------------------------------------------------------ roles


@pytest.mark.parametrize("role", ["service", "operator"])
def test_the_scheduler_and_operators_may_close_cycles(role):
    domain.authorize_close(role)


@pytest.mark.parametrize("role", ["office_admin", "support", "sales", "", "Operator"])
def test_no_other_role_may_close_cycles(role):
    with pytest.raises(Rejected) as refused:
        domain.authorize_close(role)

    assert refused.value.reason_code == "not_authorized"
