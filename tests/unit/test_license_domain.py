"""License rules: proration, restore, removal, seats, roles, and billing each license-day exactly once."""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.license_orders import domain
from services.license_orders.domain import Balance
from shared.cycles import Cycle, cycle_containing, next_cycle
from shared.money import to_cents
from shared.rejections import Rejected

D = date
PRICE = Decimal("15.00")

billing_days = st.integers(min_value=1, max_value=31)
prices = st.decimals(min_value=Decimal("0.00"), max_value=Decimal("500.00"), places=2)
quantities = st.integers(min_value=1, max_value=10_000)


def quote(
    balance: Balance = Balance(),
    quantity: int = 1,
    price: str | Decimal = PRICE,
    day: date = D(2026, 11, 16),
    billing_day: int = 1,
    open_cycle: Cycle | None = None,
) -> domain.PurchaseQuote:
    open_cycle = open_cycle or cycle_containing(billing_day, day)
    return domain.quote_purchase(balance, quantity, Decimal(price), day, billing_day, open_cycle)


def exact(amount: Decimal) -> Fraction:
    return Fraction(amount)


@st.composite
def balances(draw: st.DrawFn) -> Balance:
    """Any balance that satisfies the invariant."""
    purchased = draw(st.integers(min_value=0, max_value=200))
    scheduled = draw(st.integers(min_value=0, max_value=purchased))
    assigned = draw(st.integers(min_value=0, max_value=purchased - scheduled))
    return Balance(purchased=purchased, assigned=assigned, scheduled_for_removal=scheduled)


@st.composite
def day_in_a_cycle(draw: st.DrawFn) -> tuple[int, Cycle, date]:
    """A billing day, one of its cycles, and a day inside that cycle."""
    billing_day = draw(billing_days)
    cycle = cycle_containing(billing_day, draw(st.dates(min_value=D(2024, 1, 1), max_value=D(2032, 12, 31))))
    offset = draw(st.integers(min_value=0, max_value=cycle.days - 1))
    return billing_day, cycle, cycle.start + timedelta(days=offset)


# ------------------------------------------------------------------ proration


def test_spec_example_two_users_bought_on_nov_16_cost_15():
    q = quote(quantity=2, price="15.00", day=D(2026, 11, 16))

    assert q.prorated_amount == Decimal("15.00")
    assert q.quantity_added == 2
    assert q.quantity_restored == 0
    assert q.cycle == Cycle(D(2026, 11, 1), D(2026, 12, 1))
    assert q.segments == (domain.ProrationSegment(D(2026, 11, 16), D(2026, 12, 1), Decimal("15.00"), late=False),)
    assert q.recurring_amount_per_cycle == Decimal("30.00")


@pytest.mark.parametrize(
    ("billing_day", "day", "quantity", "price", "remaining_days", "cycle_days", "expected"),
    [
        # billing day 1: February (28 and leap 29), a 30-day and a 31-day month, first and last day
        (1, D(2027, 2, 1), 3, "15.00", 28, 28, "45.00"),
        (1, D(2027, 2, 28), 1, "15.00", 1, 28, "0.54"),
        (1, D(2028, 2, 1), 2, "15.00", 29, 29, "30.00"),
        (1, D(2028, 2, 29), 1, "15.00", 1, 29, "0.52"),
        (1, D(2026, 11, 1), 1, "29.99", 30, 30, "29.99"),
        (1, D(2026, 11, 30), 1, "15.00", 1, 30, "0.50"),
        (1, D(2026, 12, 2), 1, "29.99", 30, 31, "29.02"),
        (1, D(2026, 12, 31), 2, "29.99", 1, 31, "1.93"),
        # billing day 31: cycles Jan 31 - Feb 28 (28 days) and Feb 28 - Mar 31 (31 days)
        (31, D(2027, 1, 31), 1, "15.00", 28, 28, "15.00"),
        (31, D(2027, 2, 1), 1, "15.00", 27, 28, "14.46"),
        (31, D(2027, 2, 27), 1, "15.00", 1, 28, "0.54"),
        (31, D(2027, 3, 30), 1, "15.00", 1, 31, "0.48"),
        # billing day 30: Feb 28 - Mar 30, 2027 (30 days)
        (30, D(2027, 2, 28), 1, "15.00", 30, 30, "15.00"),
        (30, D(2027, 3, 1), 3, "29.99", 29, 30, "86.97"),
        (30, D(2027, 3, 29), 1, "15.00", 1, 30, "0.50"),
        # billing day 29: Feb 28 - Mar 29, 2027 (29 days); Jan 29 - Feb 29, 2028 (31); Feb 29 - Mar 29, 2028 (29)
        (29, D(2027, 3, 28), 1, "15.00", 1, 29, "0.52"),
        (29, D(2028, 2, 28), 1, "15.00", 1, 31, "0.48"),
        (29, D(2028, 3, 16), 4, "9.99", 13, 29, "17.91"),
    ],
)
def test_a_purchase_is_charged_for_the_days_left_in_its_cycle(
    billing_day, day, quantity, price, remaining_days, cycle_days, expected
):
    q = quote(quantity=quantity, price=price, day=day, billing_day=billing_day)

    (segment,) = q.segments
    assert (segment.period_end - segment.period_start).days == remaining_days
    assert q.cycle.days == cycle_days
    assert q.prorated_amount == Decimal(expected)


@settings(max_examples=200, deadline=None)
@given(at=day_in_a_cycle(), price=prices, quantity=st.integers(min_value=1, max_value=50))
def test_buying_on_the_first_day_costs_full_price_and_on_the_last_day_one_cycle_day(at, price, quantity):
    billing_day, cycle, _ = at
    last_day = cycle.end - timedelta(days=1)

    first = quote(quantity=quantity, price=price, day=cycle.start, billing_day=billing_day)
    last = quote(quantity=quantity, price=price, day=last_day, billing_day=billing_day)

    assert first.prorated_amount == to_cents(price * quantity)
    assert last.prorated_amount == to_cents(price * quantity / cycle.days)


def test_proration_rounds_a_half_cent_up():
    # 10.10 * 7 / 28 = 2.525 exactly: half-up gives 2.53 (banker's rounding would give 2.52)
    q = quote(quantity=1, price="10.10", day=D(2027, 2, 22), billing_day=1)

    assert q.prorated_amount == Decimal("2.53")


def test_proration_of_a_tenth_of_a_cent_below_half_rounds_down():
    # 0.18 * 7 / 28 = 0.045 -> 0.05, but 0.17 * 7 / 28 = 0.0425 -> 0.04
    assert quote(price="0.18", day=D(2027, 2, 22)).prorated_amount == Decimal("0.05")
    assert quote(price="0.17", day=D(2027, 2, 22)).prorated_amount == Decimal("0.04")


@settings(max_examples=200, deadline=None)
@given(at=day_in_a_cycle(), price=prices, quantity=quantities, balance=balances())
def test_preview_and_confirmation_quote_the_same_amount_for_the_same_state(at, price, quantity, balance):
    billing_day, cycle, day = at

    preview = domain.quote_purchase(balance, quantity, price, day, billing_day, cycle)
    confirmation = domain.quote_purchase(balance, quantity, price, day, billing_day, cycle)

    assert confirmation == preview
    assert confirmation.prorated_amount == preview.prorated_amount
    # and that amount is the spec's formula, rounded half-up to the cent
    added = quantity - min(quantity, balance.scheduled_for_removal)
    remaining = (cycle.end - day).days
    formula = Fraction(price) * added * remaining / cycle.days
    assert abs(exact(preview.prorated_amount) - formula) <= Fraction(1, 200)
    assert preview.prorated_amount == preview.prorated_amount.quantize(Decimal("0.01"))


@pytest.mark.parametrize("quantity", [0, -1, 10_001])
def test_a_purchase_quantity_outside_1_to_10000_is_refused(quantity):
    with pytest.raises(Rejected) as refused:
        quote(quantity=quantity)

    assert refused.value.reason_code == "invalid_quantity"


def test_the_largest_purchase_of_10000_is_accepted():
    assert quote(quantity=10_000, day=D(2026, 11, 1)).prorated_amount == Decimal("150000.00")


# ------------------------------------------------------------------ restore


@settings(max_examples=200, deadline=None)
@given(at=day_in_a_cycle(), price=prices, balance=balances(), data=st.data())
def test_restore_never_charges(at, price, balance, data):
    billing_day, cycle, day = at
    if balance.scheduled_for_removal == 0:
        balance = Balance(purchased=balance.purchased + 1, assigned=balance.assigned, scheduled_for_removal=1)
    quantity = data.draw(st.integers(min_value=1, max_value=balance.scheduled_for_removal))

    q = domain.quote_purchase(balance, quantity, price, day, billing_day, cycle)
    after = domain.apply_purchase(balance, q)

    assert q.prorated_amount == 0
    assert q.quantity_added == 0
    assert q.quantity_restored == quantity
    assert q.segments == ()
    assert after.purchased == balance.purchased
    assert after.scheduled_for_removal == balance.scheduled_for_removal - quantity
    assert after.available == balance.available + quantity


def test_buying_more_than_scheduled_restores_those_first_and_charges_only_the_new_ones():
    balance = Balance(purchased=5, assigned=1, scheduled_for_removal=2)

    q = quote(balance, quantity=5, price="15.00", day=D(2026, 11, 16))
    after = domain.apply_purchase(balance, q)

    assert (q.quantity_restored, q.quantity_added) == (2, 3)
    assert q.prorated_amount == Decimal("22.50")  # 15.00 * 3 * 15 / 30
    assert after == Balance(purchased=8, assigned=1, scheduled_for_removal=0)
    assert q.recurring_amount_per_cycle == Decimal("75.00")  # all 5 recur from the next cycle


# ------------------------------------------------------------------ invariant under any sequence

operations = st.lists(
    st.one_of(
        st.tuples(st.just("buy"), st.integers(min_value=1, max_value=4)),
        st.tuples(st.just("remove"), st.integers(min_value=1, max_value=4)),
        st.tuples(st.just("assign"), st.integers(min_value=0, max_value=6)),
        st.tuples(st.just("unassign"), st.integers(min_value=0, max_value=6)),
        st.tuples(st.just("seal"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, billing_day=billing_days)
def test_no_sequence_of_commands_assigns_more_licenses_than_are_kept(ops, billing_day):
    balance = Balance()
    assignees: set[int] = set()
    open_cycle = cycle_containing(billing_day, D(2026, 11, 16))

    for op, arg in ops:
        before = balance
        try:
            if op == "buy":
                q = domain.quote_purchase(balance, arg, PRICE, open_cycle.start, billing_day, open_cycle)
                balance = domain.apply_purchase(balance, q)
                assert balance.purchased - balance.scheduled_for_removal == (
                    before.purchased - before.scheduled_for_removal + arg
                )
            elif op == "remove":
                balance, effective_on = domain.schedule_removal(
                    balance, "user", arg, open_cycle.start, billing_day, open_cycle
                )
                assert arg <= before.available
                assert effective_on == open_cycle.end
            elif op == "assign":
                balance = domain.assign(balance, "user", arg in assignees)
                assert arg not in assignees
                assert before.available >= 1
                assignees.add(arg)
            elif op == "unassign":
                balance = domain.unassign(balance, "user", arg in assignees)
                assert arg in assignees
                assignees.discard(arg)
            else:  # seal: removals scheduled in the open cycle take effect at its end
                balance, kept = domain.seal(balance, balance.scheduled_for_removal, 0)
                assert balance.scheduled_for_removal == 0
                assert kept == balance.purchased == before.purchased - before.scheduled_for_removal
                open_cycle = next_cycle(billing_day, open_cycle)
        except Rejected as refused:
            assert balance == before  # a refusal changes nothing
            expected = {
                "remove": "insufficient_available_licenses" if arg > before.available else None,
                "assign": "already_assigned"
                if arg in assignees
                else ("no_license_available" if before.available < 1 else None),
                "unassign": "not_assigned" if arg not in assignees else None,
            }.get(op)
            assert refused.reason_code == expected

        balance.check()
        assert 0 <= balance.assigned <= balance.purchased - balance.scheduled_for_removal
        assert balance.assigned == len(assignees)
        assert balance.purchased - balance.assigned - balance.scheduled_for_removal >= 0
        assert balance.available == balance.purchased - balance.assigned - balance.scheduled_for_removal
        assert balance.scheduled_for_removal >= 0


# ------------------------------------------------------------------ each license-day billed exactly once


def _recurring(price: Decimal, quantity: int) -> Decimal:
    """What a seal's recurring line charges per cycle kept: unit price * quantity, to the cent on the invoice."""
    return to_cents(price * quantity)


@settings(max_examples=300, deadline=None)
@given(
    at=day_in_a_cycle(),
    price=prices,
    quantity=st.integers(min_value=1, max_value=100),
    late_by=st.integers(min_value=0, max_value=3),
    kept_for=st.integers(min_value=0, max_value=4),
)
def test_proration_plus_recurring_bills_each_license_day_exactly_once(at, price, quantity, late_by, kept_for):
    billing_day, own, day = at
    open_cycle = own
    for _ in range(late_by):  # the purchase arrives after its own cycle (and maybe more) was sealed
        open_cycle = next_cycle(billing_day, open_cycle)

    segments = domain.proration_segments(price, quantity, day, billing_day, open_cycle)
    recurring_periods = []
    cycle = open_cycle
    for _ in range(kept_for):  # each later seal bills the following cycle in advance
        cycle = next_cycle(billing_day, cycle)
        recurring_periods.append(cycle)

    # the periods charged tile [purchase day, end of the last cycle kept) without gap or overlap
    periods = [(s.period_start, s.period_end) for s in segments] + [(c.start, c.end) for c in recurring_periods]
    assert periods[0][0] == day
    for (_, end), (start, _) in pairwise(periods):
        assert end == start
    assert segments[-1].period_end == open_cycle.end
    assert len(segments) == 1 + late_by

    # the money: unit price * license-days / cycle_days per cycle, within half a cent per charge
    charged = sum((s.amount for s in segments), Decimal(0)) + _recurring(price, quantity) * kept_for
    license_cycles = Fraction((own.end - day).days, own.days) + late_by + kept_for
    owed = Fraction(price) * quantity * license_cycles
    charges = len(segments) + kept_for
    assert abs(exact(charged) - owed) <= Fraction(charges, 200)

    assert [s.late for s in segments] == [late_by > 0] * len(segments)


def test_a_late_purchase_is_charged_for_its_own_cycle_and_each_cycle_up_to_the_open_one():
    # bought Oct 20 (October already sealed and invoiced, November's recurring already billed without them)
    october = Cycle(D(2026, 10, 1), D(2026, 11, 1))
    november = Cycle(D(2026, 11, 1), D(2026, 12, 1))
    december = Cycle(D(2026, 12, 1), D(2027, 1, 1))

    q = quote(quantity=2, price="15.00", day=D(2026, 10, 20), billing_day=1, open_cycle=december)

    assert q.segments == (
        domain.ProrationSegment(D(2026, 10, 20), october.end, Decimal("11.61"), late=True),  # 30 * 12 / 31
        domain.ProrationSegment(november.start, november.end, Decimal("30.00"), late=True),
        domain.ProrationSegment(december.start, december.end, Decimal("30.00"), late=True),
    )
    assert q.prorated_amount == Decimal("71.61")
    assert q.cycle == december


def test_the_open_cycles_seal_bills_a_late_purchase_from_the_next_cycle_on_and_not_again_before():
    november = Cycle(D(2026, 11, 1), D(2026, 12, 1))
    balance = Balance(purchased=3)

    q = quote(balance, quantity=2, price="15.00", day=D(2026, 10, 20), billing_day=1, open_cycle=november)
    after = domain.apply_purchase(balance, q)
    sealed, kept = domain.seal(after, removing=0, bought_on_or_after_end=0)

    assert q.segments[-1].period_end == november.end  # the late charge stops where November ends
    assert next_cycle(1, november).start == november.end  # and the recurring line starts there
    assert kept == 5  # all five licenses recur in December, the late two once, not twice
    assert sealed.purchased == 5


def test_a_purchase_dated_after_the_open_cycle_is_left_out_of_that_cycles_recurring_line():
    # November is still open (its close has not run yet) when 2 are bought on Dec 5
    november = Cycle(D(2026, 11, 1), D(2026, 12, 1))
    balance = Balance(purchased=3)

    q = quote(balance, quantity=2, price="15.00", day=D(2026, 12, 5), billing_day=1, open_cycle=november)
    after = domain.apply_purchase(balance, q)
    _, kept = domain.seal(after, removing=0, bought_on_or_after_end=2)

    assert q.segments == (domain.ProrationSegment(D(2026, 12, 5), D(2027, 1, 1), Decimal("26.13"), late=False),)
    assert q.cycle == Cycle(D(2026, 12, 1), D(2027, 1, 1))
    assert kept == 3  # December's recurring line bills only the 3 older licenses: the 2 are prorated there


# ------------------------------------------------------------------ removal


def test_removing_more_than_available_is_refused_with_how_many_could_be_removed():
    balance = Balance(purchased=5, assigned=2)

    with pytest.raises(Rejected) as refused:
        domain.schedule_removal(balance, "user", 4, D(2026, 11, 16), 1, Cycle(D(2026, 11, 1), D(2026, 12, 1)))

    assert refused.value.reason_code == "insufficient_available_licenses"
    assert re.search(r"\b3\b", refused.value.reason)


def test_licenses_already_scheduled_cannot_be_scheduled_again():
    balance = Balance(purchased=5, assigned=0, scheduled_for_removal=3)

    with pytest.raises(Rejected) as refused:
        domain.schedule_removal(balance, "room_phone", 3, D(2026, 11, 16), 1, Cycle(D(2026, 11, 1), D(2026, 12, 1)))

    assert refused.value.reason_code == "insufficient_available_licenses"
    assert re.search(r"\b2\b", refused.value.reason)


def test_a_removal_takes_licenses_out_of_available_at_once_and_leaves_at_the_cycle_end():
    balance = Balance(purchased=5, assigned=2)

    after, effective_on = domain.schedule_removal(
        balance, "user", 3, D(2026, 11, 16), 1, Cycle(D(2026, 11, 1), D(2026, 12, 1))
    )

    assert after == Balance(purchased=5, assigned=2, scheduled_for_removal=3)
    assert after.available == 0
    assert effective_on == D(2026, 12, 1)


@pytest.mark.parametrize(
    ("billing_day", "day", "effective_on"),
    [
        (1, D(2026, 11, 30), D(2026, 12, 1)),
        (31, D(2027, 2, 1), D(2027, 2, 28)),
        (31, D(2027, 2, 28), D(2027, 3, 31)),
        (30, D(2028, 2, 29), D(2028, 3, 30)),
    ],
)
def test_a_removal_is_effective_at_the_end_of_the_cycle_it_is_made_in(billing_day, day, effective_on):
    _, effective = domain.schedule_removal(
        Balance(purchased=1), "fax", 1, day, billing_day, cycle_containing(billing_day, day)
    )

    assert effective == effective_on


def test_a_late_removal_is_effective_at_the_end_of_the_open_cycle():
    # dated Oct 20, but October is sealed and its recurring line already billed November
    _, effective_on = domain.schedule_removal(
        Balance(purchased=2), "user", 1, D(2026, 10, 20), 1, Cycle(D(2026, 11, 1), D(2026, 12, 1))
    )

    assert effective_on == D(2026, 12, 1)


def test_a_license_scheduled_for_removal_is_not_billed_for_the_next_cycle():
    balance = Balance(purchased=5, assigned=2, scheduled_for_removal=2)

    after, kept = domain.seal(balance, removing=2, bought_on_or_after_end=0)

    assert kept == 3
    assert after == Balance(purchased=3, assigned=2, scheduled_for_removal=0)


@pytest.mark.parametrize("quantity", [0, 10_001])
def test_a_removal_quantity_outside_1_to_10000_is_refused(quantity):
    with pytest.raises(Rejected) as refused:
        domain.schedule_removal(
            Balance(purchased=20_000), "user", quantity, D(2026, 11, 16), 1, Cycle(D(2026, 11, 1), D(2026, 12, 1))
        )

    assert refused.value.reason_code == "invalid_quantity"


# ------------------------------------------------------------------ seats


def test_assigning_takes_one_available_license():
    after = domain.assign(Balance(purchased=2), "user", already_assigned=False)

    assert after == Balance(purchased=2, assigned=1)
    assert after.available == 1


@pytest.mark.parametrize(
    "balance",
    [
        Balance(purchased=0),
        Balance(purchased=2, assigned=2),
        Balance(purchased=2, assigned=1, scheduled_for_removal=1),
        Balance(purchased=2, scheduled_for_removal=2),
    ],
)
def test_assigning_without_an_available_license_is_refused(balance):
    with pytest.raises(Rejected) as refused:
        domain.assign(balance, "user", already_assigned=False)

    assert refused.value.reason_code == "no_license_available"


def test_assigning_the_same_assignee_twice_does_not_take_a_second_license():
    with pytest.raises(Rejected) as refused:
        domain.assign(Balance(purchased=3, assigned=1), "room_phone", already_assigned=True)

    assert refused.value.reason_code == "already_assigned"


def test_unassigning_frees_the_license():
    after = domain.unassign(Balance(purchased=2, assigned=2), "user", is_assigned=True)

    assert after == Balance(purchased=2, assigned=1)
    assert after.available == 1


def test_unassigning_someone_without_a_license_is_refused():
    with pytest.raises(Rejected) as refused:
        domain.unassign(Balance(purchased=2, assigned=1), "shared_line", is_assigned=False)

    assert refused.value.reason_code == "not_assigned"


# ------------------------------------------------------------------ roles

ROLES = ["office_admin", "support", "sales", "service", "operator", "", "admin", "OFFICE_ADMIN"]
ALLOWED = {
    "PreviewLicensePurchase": {"office_admin"},
    "PurchaseLicenses": {"office_admin"},
    "RemoveLicenses": {"office_admin"},
    "AssignLicense": {"service", "office_admin"},
    "UnassignLicense": {"service", "office_admin"},
    "SetCallingCreditCap": set(),
    "CloseBillingCycles": set(),
}


@pytest.mark.parametrize("command_type", sorted(ALLOWED))
@pytest.mark.parametrize("role", ROLES)
def test_only_the_roles_in_the_spec_table_may_send_a_license_command(command_type, role):
    if role in ALLOWED[command_type]:
        domain.authorize(command_type, role)
    else:
        with pytest.raises(Rejected) as refused:
            domain.authorize(command_type, role)
        assert refused.value.reason_code == "not_authorized"
        assert refused.value.reason


# ------------------------------------------------------------------ a purchase racing with a late close


def test_a_purchase_costs_the_same_whether_it_is_processed_before_or_after_a_late_close():
    # 2 of 5 users were scheduled in November to leave on Dec 1. The November close runs late; meanwhile
    # the admin buys 2 users on Dec 5. December's charges must not depend on which is processed first.
    november = Cycle(D(2026, 11, 1), D(2026, 12, 1))
    december = Cycle(D(2026, 12, 1), D(2027, 1, 1))
    before = Balance(purchased=5, scheduled_for_removal=2)
    price = Decimal("15.00")

    # the close first: the removal applies, then the purchase adds 2 prorated Dec 5 - Jan 1
    closed, kept = domain.seal(before, removing=2, bought_on_or_after_end=0)
    bought = quote(closed, quantity=2, price=price, day=D(2026, 12, 5), open_cycle=december)
    close_first = to_cents(price * kept) + bought.prorated_amount  # 45.00 + 26.13

    # the purchase first: it must not restore the 2 (gone since Dec 1); it adds 2 prorated from Dec 5
    # (nothing is restorable: the only removal took effect on Dec 1, before the purchase date)
    restored = domain.quote_purchase(before, 2, price, D(2026, 12, 5), 1, november, restorable=0)
    after = domain.apply_purchase(before, restored)
    _, kept = domain.seal(after, removing=after.scheduled_for_removal, bought_on_or_after_end=restored.quantity_added)
    purchase_first = to_cents(price * kept) + restored.prorated_amount  # 45.00 + 26.13

    assert close_first == Decimal("71.13")
    assert purchase_first == close_first
