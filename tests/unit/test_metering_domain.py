"""Calling credits: accrual up to the cap, alerts once each, blocking, cap changes, late usage."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.usage_metering import domain
from services.usage_metering.domain import Alert, Meter
from shared.rejections import Rejected

CAP = Decimal("250.00")


def kinds(alerts: list[Alert]) -> list[tuple[str, int | str | None]]:
    return [(a.kind, a.threshold_percent if a.kind == "threshold" else a.reason) for a in alerts]


def accrue_all(meter: Meter, *costs: str) -> tuple[Meter, list[Alert]]:
    alerts: list[Alert] = []
    for cost in costs:
        meter, new = domain.accrue(meter, Decimal(cost))
        alerts += new
    return meter, alerts


def test_the_default_cap_is_250():
    assert Decimal("250.00") == domain.DEFAULT_CAP


def test_26_calls_of_10_at_a_250_cap_alert_once_per_threshold_block_once_and_bill_250():
    meter = Meter(cap=CAP)
    seen: list[tuple[int, Alert]] = []
    for call in range(1, 27):
        meter, alerts = domain.accrue(meter, Decimal("10.00"))
        seen += [(call, a) for a in alerts]

    assert [(call, a.kind, a.threshold_percent) for call, a in seen] == [
        (13, "threshold", 50),  # 130.00 >= 125.00
        (20, "threshold", 80),  # 200.00
        (25, "threshold", 100),  # 250.00
        (25, "blocked", None),
    ]
    assert [a.billable for _, a in seen] == [Decimal("130.00"), Decimal("200.00"), CAP, CAP]
    assert meter.billable == Decimal("250.00")
    assert meter.over_cap == Decimal("10.00")
    assert meter.blocked


def test_one_call_crossing_several_thresholds_alerts_each_once_in_order_then_blocks():
    meter = Meter(cap=CAP, billable=Decimal("100.00"))

    meter, alerts = domain.accrue(meter, Decimal("300.00"))

    assert kinds(alerts) == [("threshold", 50), ("threshold", 80), ("threshold", 100), ("blocked", None)]
    assert meter.billable == CAP
    assert meter.over_cap == Decimal("150.00")

    meter, again = domain.accrue(meter, Decimal("5.00"))
    assert again == []
    assert meter.over_cap == Decimal("155.00")


def test_a_call_that_reaches_80_percent_exactly_alerts_50_and_80_but_does_not_block():
    meter, alerts = domain.accrue(Meter(cap=CAP), Decimal("200.00"))

    assert kinds(alerts) == [("threshold", 50), ("threshold", 80)]
    assert not meter.blocked


def test_a_call_just_below_a_threshold_does_not_alert():
    meter, alerts = domain.accrue(Meter(cap=CAP), Decimal("124.999999"))

    assert alerts == []
    assert meter.billable == Decimal("124.999999")


def test_the_part_of_a_call_beyond_the_cap_is_over_cap_and_not_billed():
    meter, _ = domain.accrue(Meter(cap=CAP, billable=Decimal("249.50")), Decimal("1.234567"))

    assert meter.billable == CAP
    assert meter.over_cap == Decimal("0.734567")


def test_raising_the_cap_unblocks_keeps_50_alerted_and_rearms_80_and_100():
    meter, _ = accrue_all(Meter(cap=CAP), *["50.00"] * 5)
    assert meter.blocked

    meter, raised = domain.change_cap(meter, Decimal("400.00"))

    assert kinds(raised) == [("unblocked", "cap_raised")]
    assert not meter.blocked
    assert meter.alerted == frozenset({50})  # 250 is still past 50 % of 400 (200)
    assert meter.cap == Decimal("400.00")

    meter, below_80 = accrue_all(meter, "60.00")  # 310: 77.5 %
    assert below_80 == []
    meter, at_80 = accrue_all(meter, "10.00")  # 320: 80 %
    assert kinds(at_80) == [("threshold", 80)]
    meter, at_100 = accrue_all(meter, "100.00")  # 400 billed, 20 over cap
    assert kinds(at_100) == [("threshold", 100), ("blocked", None)]
    assert meter.billable == Decimal("400.00")
    assert meter.over_cap == Decimal("20.00")


def test_a_cap_raise_to_exactly_the_accrual_does_not_unblock():
    meter, _ = accrue_all(Meter(cap=CAP), "250.00")

    meter, alerts = domain.change_cap(meter, CAP)

    assert alerts == []
    assert meter.blocked


def test_lowering_the_cap_below_the_accrual_blocks_at_once_and_keeps_what_was_billed():
    meter, _ = accrue_all(Meter(cap=CAP), "100.00")

    meter, alerts = domain.change_cap(meter, Decimal("80.00"))

    assert kinds(alerts) == [("threshold", 50), ("threshold", 80), ("threshold", 100), ("blocked", None)]
    assert meter.blocked
    assert meter.billable == Decimal("100.00")  # calls made under the old cap are not un-billed
    meter, _ = accrue_all(meter, "5.00")
    assert meter.billable == Decimal("100.00")
    assert meter.over_cap == Decimal("5.00")


def test_a_negative_cap_is_refused():
    with pytest.raises(Rejected) as refused:
        domain.change_cap(Meter(cap=CAP), Decimal("-1"))

    assert refused.value.reason_code == "invalid_cap"


def test_a_new_cycle_unblocks_a_blocked_account():
    previous, _ = accrue_all(Meter(cap=CAP), "260.00")

    current, alerts = domain.start_cycle(previous, Meter(cap=CAP))

    assert kinds(alerts) == [("unblocked", "new_cycle")]
    assert not current.blocked
    assert current.billable == 0
    assert current.alerted == frozenset()


def test_a_new_cycle_after_an_unblocked_one_sends_nothing():
    previous, _ = accrue_all(Meter(cap=CAP), "100.00")

    assert domain.start_cycle(previous, Meter(cap=CAP)) == (Meter(cap=CAP), [])
    assert domain.start_cycle(None, Meter(cap=CAP)) == (Meter(cap=CAP), [])


def test_a_new_cycle_already_at_its_cap_stays_blocked():
    previous, _ = accrue_all(Meter(cap=CAP), "260.00")
    upcoming, _ = accrue_all(Meter(cap=CAP), "250.00")  # calls dated in the next cycle arrived before the close

    current, alerts = domain.start_cycle(previous, upcoming)

    assert alerts == []
    assert current.blocked


def test_a_new_cycle_with_a_zero_cap_stays_blocked():
    previous, _ = domain.change_cap(Meter(cap=CAP), Decimal("0"))
    assert previous.blocked  # setting the cap to 0 blocks calling at once

    current, alerts = domain.start_cycle(previous, Meter(cap=Decimal("0")))

    assert ("unblocked", "new_cycle") not in kinds(alerts)
    assert current.blocked


# ------------------------------------------------------------------ late usage


def test_late_usage_never_alerts_or_blocks_and_respects_the_cycles_cap():
    sealed = Meter(cap=CAP, billable=Decimal("240.00"), alerted=frozenset({50, 80}))

    after = domain.accrue_late(sealed, Decimal("20.00"))

    assert after.billable == CAP
    assert after.over_cap == Decimal("10.00")
    assert after.late_unbilled == Decimal("10.00")
    assert after.alerted == frozenset({50, 80})
    assert not after.blocked

    after = domain.accrue_late(after, Decimal("5.00"))
    assert after.billable == CAP
    assert after.late_unbilled == Decimal("10.00")
    assert after.over_cap == Decimal("15.00")


def test_late_unbilled_sums_the_billable_part_of_each_late_call():
    meter = Meter(cap=CAP, billable=Decimal("100.00"))
    for cost in ("1.234567", "2.000001", "0.000002"):
        meter = domain.accrue_late(meter, Decimal(cost))

    assert meter.late_unbilled == Decimal("3.234570")
    assert meter.billable == Decimal("103.234570")
    assert meter.over_cap == 0


@settings(max_examples=200, deadline=None)
@given(
    start=st.decimals(min_value=0, max_value=250, places=6),
    costs=st.lists(st.decimals(min_value=0, max_value=300, places=6), max_size=20),
)
def test_late_usage_bills_at_most_the_room_left_under_the_cap(start, costs):
    meter = Meter(cap=CAP, billable=start)
    for cost in costs:
        meter = domain.accrue_late(meter, cost)

    assert meter.billable <= CAP
    assert meter.late_unbilled == meter.billable - start
    assert meter.late_unbilled + meter.over_cap == sum(costs, Decimal(0))
    assert meter.alerted == frozenset()
    assert not meter.blocked


# ------------------------------------------------------------------ any sequence


def reached(meter: Meter) -> set[int]:
    return {p for p in domain.THRESHOLDS if meter.billable * 100 >= meter.cap * p}


caps = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000.00"), places=2)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.decimals(min_value=0, max_value=300, places=6)),
        st.tuples(st.just("cap"), caps),
        st.tuples(st.just("cycle"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(first_cap=caps, steps=steps)
def test_any_sequence_of_calls_cap_changes_and_cycles_keeps_the_meter_consistent(first_cap, steps):
    """Costs only: duplicate calls are dropped before the domain (by call id), so every cost here counts.

    The cap never exceeded is the *highest* cap in force during the cycle, not the current one:
    lowering the cap below the accrual does not un-bill calls made under the old cap (see the
    module docstring of ``services.usage_metering.domain``), it only blocks at once.

    Zero caps are left out here: see ``test_a_new_cycle_with_a_zero_cap_stays_blocked``.
    """
    meter = Meter(cap=first_cap)
    accrued_costs = Decimal(0)
    highest_cap = first_cap
    fired_since_cap_change: list[int] = []

    for kind, value in steps:
        was_blocked = meter.blocked
        reached_before = reached(meter) if kind != "cycle" else set()
        if kind == "call":
            meter, alerts = domain.accrue(meter, value)
            accrued_costs += value
        elif kind == "cap":
            meter, alerts = domain.change_cap(meter, value)
            highest_cap = max(highest_cap, value)
            fired_since_cap_change = []
        else:
            meter, alerts = domain.start_cycle(meter, Meter(cap=meter.cap))
            accrued_costs = Decimal(0)
            highest_cap = meter.cap
            fired_since_cap_change = []

        thresholds = [a.threshold_percent for a in alerts if a.kind == "threshold" and a.threshold_percent is not None]
        # a threshold alerts exactly when it becomes reached (under the cap then in force)
        assert set(thresholds) == reached(meter) - reached_before
        assert meter.alerted == reached(meter)
        fired_since_cap_change += thresholds
        assert sorted(thresholds) == thresholds  # 50, 80, 100 in that order
        for percent in set(fired_since_cap_change):  # at most once per cycle and cap level
            assert fired_since_cap_change.count(percent) == 1

        assert meter.billable <= highest_cap
        assert meter.billable + meter.over_cap == accrued_costs
        assert meter.billable >= 0
        assert meter.over_cap >= 0
        assert meter.blocked == (meter.billable >= meter.cap)
        # the platform is told about every change of the blocked state, and only then
        told = [a.kind for a in alerts if a.kind in ("blocked", "unblocked")]
        if meter.blocked == was_blocked:
            assert told == []
        else:
            assert told == (["blocked"] if meter.blocked else ["unblocked"])
        if "blocked" in told:
            assert alerts[-1].kind == "blocked"  # after the thresholds


# ------------------------------------------------------------------ roles


@pytest.mark.parametrize("role", ["support", "sales"])
def test_support_and_sales_may_change_the_cap(role):
    domain.authorize_cap_change(role)


@pytest.mark.parametrize("role", ["office_admin", "service", "operator", "", "Support"])
def test_no_other_role_may_change_the_cap(role):
    with pytest.raises(Rejected) as refused:
        domain.authorize_cap_change(role)

    assert refused.value.reason_code == "not_authorized"


meters = st.builds(
    Meter,
    cap=st.decimals(min_value=0, max_value=Decimal("1000.00"), places=2),
    billable=st.decimals(min_value=0, max_value=1200, places=6),
    over_cap=st.decimals(min_value=0, max_value=100, places=6),
    alerted=st.frozensets(st.sampled_from(domain.THRESHOLDS)),
    blocked=st.booleans(),
    late_unbilled=st.just(domain.ZERO),
)


def one_by_one(meter: Meter, costs: list[Decimal]) -> tuple[Meter, list[tuple[int, Alert]]]:
    """The rule: ``accrue`` for each call in turn, each alert with the index of the call that raised it."""
    alerts: list[tuple[int, Alert]] = []
    for index, cost in enumerate(costs):
        meter, raised = domain.accrue(meter, cost)
        alerts += [(index, alert) for alert in raised]
    return meter, alerts


def in_micros(costs: list[Decimal]) -> list[int]:
    return [int(cost * 1_000_000) for cost in costs]


call_costs = st.lists(st.decimals(min_value=0, max_value=300, places=6), max_size=30)


@settings(max_examples=400)
@given(meter=meters, costs=call_costs)
def test_a_batch_of_calls_accrues_and_alerts_in_micro_dollars_exactly_as_the_calls_one_by_one(meter, costs):
    """The calls path folds a batch in integer micro-dollars (accrue_calls); accrue is the rule."""
    expected, expected_alerts = one_by_one(meter, costs)

    folded, parts, alerts = domain.accrue_calls(domain.in_micros(meter), in_micros(costs))

    assert domain.in_usd(folded) == expected
    assert alerts == expected_alerts
    assert [billable + over for billable, over in parts] == in_micros(costs)
    assert domain.in_micros(meter).billable + sum(b for b, _ in parts) == folded.billable
    assert domain.in_micros(meter).over_cap + sum(o for _, o in parts) == folded.over_cap


@settings(max_examples=300)
@given(
    micros=st.one_of(st.integers(min_value=0, max_value=1_000), st.integers(min_value=0, max_value=10**9)),
    offsets=st.lists(st.integers(-2, 2), min_size=3, max_size=3),
)
def test_each_threshold_alerts_at_the_same_call_as_the_rule_when_the_accrual_lands_beside_it(micros, offsets):
    """Calls that bring the accrual to a micro-dollar or two either side of each threshold, or onto
    it, for caps whose thresholds fall between two micro-dollars (50 % of 0.000003 USD) as well as
    on one: the batch in micro-dollars alerts at the same call as the rule."""
    meter = Meter(cap=Decimal(micros) / 1_000_000)
    micro = Decimal("0.000001")
    marks = [meter.cap * p / 100 + offset * micro for p, offset in zip(domain.THRESHOLDS, offsets, strict=True)]
    targets = sorted(max(Decimal(0), mark.quantize(micro, rounding="ROUND_CEILING")) for mark in marks)
    costs = [b - a for a, b in zip([Decimal(0), *targets], targets, strict=False)] + [micro] * 3

    expected, expected_alerts = one_by_one(meter, costs)
    folded, _, alerts = domain.accrue_calls(domain.in_micros(meter), in_micros(costs))

    assert (domain.in_usd(folded), alerts) == (expected, expected_alerts)


def test_a_batch_that_crosses_every_threshold_names_the_call_that_crossed_each():
    costs = [Decimal("100.00"), Decimal("30.00"), Decimal("80.00"), Decimal("40.00"), Decimal("5.00")]

    meter, _, alerts = domain.accrue_calls(domain.in_micros(Meter(cap=CAP)), in_micros(costs))

    assert [(i, a.kind, a.threshold_percent, a.billable) for i, a in alerts] == [
        (1, "threshold", 50, Decimal("130.00")),
        (2, "threshold", 80, Decimal("210.00")),
        (3, "threshold", 100, CAP),
        (3, "blocked", None, CAP),
    ]
    assert (meter.billable, meter.over_cap) == (250_000_000, 5_000_000)
    assert all(str(alert.cap) == "250.00" for _, alert in alerts), "an alert carries the cap as set"


@settings(max_examples=200)
@given(meter=meters, costs=call_costs)
def test_late_calls_split_in_micro_dollars_as_accrue_late_does(meter, costs):
    expected = meter
    for cost in costs:
        expected = domain.accrue_late(expected, cost)

    folded, parts = domain.accrue_late_calls(domain.in_micros(meter), in_micros(costs))

    assert domain.in_usd(folded) == expected
    assert [billable + over for billable, over in parts] == in_micros(costs)
    assert domain.in_micros(meter).late_unbilled + sum(b for b, _ in parts) == folded.late_unbilled


@given(meter=meters)
def test_a_meter_in_micro_dollars_is_the_same_meter(meter):
    assert domain.in_usd(domain.in_micros(meter)) == meter


def test_an_amount_finer_than_a_micro_dollar_is_refused_not_rounded():
    with pytest.raises(ValueError, match="micro-dollars"):
        domain.in_micros(Meter(cap=CAP, billable=Decimal("1.0000005")))
