"""Billing cycles: monthly, starting on the billing day, clamped to the end of a short month."""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.cycles import Cycle, cycle_containing, cycle_start_in_month, cycles_ending_by, next_cycle

D = date

billing_days = st.integers(min_value=1, max_value=31)
days = st.dates(min_value=D(2000, 1, 1), max_value=D(2100, 12, 31))


@pytest.mark.parametrize(
    ("billing_day", "day", "start", "end"),
    [
        # billing day 1: the cycle is the calendar month, of 28, 29, 30 or 31 days
        (1, D(2027, 2, 10), D(2027, 2, 1), D(2027, 3, 1)),
        (1, D(2028, 2, 29), D(2028, 2, 1), D(2028, 3, 1)),
        (1, D(2026, 4, 30), D(2026, 4, 1), D(2026, 5, 1)),
        (1, D(2026, 1, 31), D(2026, 1, 1), D(2026, 2, 1)),
        (1, D(2026, 12, 31), D(2026, 12, 1), D(2027, 1, 1)),
        # billing day 15: every month has a 15th
        (15, D(2027, 2, 14), D(2027, 1, 15), D(2027, 2, 15)),
        (15, D(2027, 2, 15), D(2027, 2, 15), D(2027, 3, 15)),
        (15, D(2028, 2, 20), D(2028, 2, 15), D(2028, 3, 15)),
        (15, D(2026, 4, 15), D(2026, 4, 15), D(2026, 5, 15)),
        (15, D(2027, 1, 3), D(2026, 12, 15), D(2027, 1, 15)),
        # billing day 28: every February has a 28th
        (28, D(2027, 2, 27), D(2027, 1, 28), D(2027, 2, 28)),
        (28, D(2027, 2, 28), D(2027, 2, 28), D(2027, 3, 28)),
        (28, D(2028, 2, 29), D(2028, 2, 28), D(2028, 3, 28)),
        # billing day 29: clamped to Feb 28 in a non-leap year, the real 29th in a leap year
        (29, D(2027, 2, 27), D(2027, 1, 29), D(2027, 2, 28)),
        (29, D(2027, 2, 28), D(2027, 2, 28), D(2027, 3, 29)),
        (29, D(2027, 3, 28), D(2027, 2, 28), D(2027, 3, 29)),
        (29, D(2028, 2, 28), D(2028, 1, 29), D(2028, 2, 29)),
        (29, D(2028, 2, 29), D(2028, 2, 29), D(2028, 3, 29)),
        # billing day 30: February is clamped, 30-day months are not
        (30, D(2027, 2, 27), D(2027, 1, 30), D(2027, 2, 28)),
        (30, D(2027, 2, 28), D(2027, 2, 28), D(2027, 3, 30)),
        (30, D(2028, 2, 29), D(2028, 2, 29), D(2028, 3, 30)),
        (30, D(2026, 4, 30), D(2026, 4, 30), D(2026, 5, 30)),
        (30, D(2026, 5, 29), D(2026, 4, 30), D(2026, 5, 30)),
        # billing day 31: clamped in every month shorter than 31 days
        (31, D(2027, 1, 31), D(2027, 1, 31), D(2027, 2, 28)),
        (31, D(2027, 2, 27), D(2027, 1, 31), D(2027, 2, 28)),
        (31, D(2027, 2, 28), D(2027, 2, 28), D(2027, 3, 31)),
        (31, D(2027, 3, 30), D(2027, 2, 28), D(2027, 3, 31)),
        (31, D(2027, 3, 31), D(2027, 3, 31), D(2027, 4, 30)),
        (31, D(2027, 4, 30), D(2027, 4, 30), D(2027, 5, 31)),
        (31, D(2028, 1, 31), D(2028, 1, 31), D(2028, 2, 29)),
        (31, D(2028, 2, 29), D(2028, 2, 29), D(2028, 3, 31)),
        (31, D(2026, 12, 31), D(2026, 12, 31), D(2027, 1, 31)),
    ],
)
def test_cycle_containing_a_day_starts_on_the_billing_day_clamped_to_the_month_end(billing_day, day, start, end):
    cycle = cycle_containing(billing_day, day)

    assert cycle == Cycle(start, end)
    assert cycle.days == (end - start).days
    assert cycle.contains(day)


def test_billing_day_31_runs_jan_31_feb_28_mar_31_apr_30():
    cycle = cycle_containing(31, D(2027, 1, 31))
    starts = []
    for _ in range(7):
        starts.append(cycle.start)
        cycle = next_cycle(31, cycle)

    assert starts == [
        D(2027, 1, 31),
        D(2027, 2, 28),
        D(2027, 3, 31),
        D(2027, 4, 30),
        D(2027, 5, 31),
        D(2027, 6, 30),
        D(2027, 7, 31),
    ]


def test_cycle_lengths_follow_the_month_the_cycle_starts_in():
    assert cycle_containing(1, D(2027, 2, 1)).days == 28
    assert cycle_containing(1, D(2028, 2, 1)).days == 29
    assert cycle_containing(1, D(2026, 11, 1)).days == 30
    assert cycle_containing(1, D(2026, 12, 1)).days == 31
    # billing day 31 from Jan 31 to Feb 28 is 28 days, from Feb 28 to Mar 31 is 31 days
    assert cycle_containing(31, D(2027, 1, 31)).days == 28
    assert cycle_containing(31, D(2027, 2, 28)).days == 31


def test_the_end_day_belongs_to_the_next_cycle_not_this_one():
    cycle = cycle_containing(1, D(2026, 11, 16))

    assert not cycle.contains(cycle.end)
    assert cycle.contains(cycle.start)
    assert cycle.contains(cycle.end - timedelta(days=1))
    assert cycle_containing(1, cycle.end).start == cycle.end


@pytest.mark.parametrize("billing_day", [0, 32, -1])
def test_a_billing_day_outside_1_to_31_is_refused(billing_day):
    with pytest.raises(ValueError, match="billing_day"):
        cycle_containing(billing_day, D(2026, 11, 16))


@settings(max_examples=300, deadline=None)
@given(billing_day=billing_days, day=days)
def test_every_day_lies_in_its_cycle_which_starts_on_the_clamped_billing_day(billing_day, day):
    cycle = cycle_containing(billing_day, day)

    assert cycle.start <= day < cycle.end
    assert cycle.start.day == min(billing_day, calendar.monthrange(cycle.start.year, cycle.start.month)[1])
    assert cycle.start == cycle_start_in_month(billing_day, cycle.start.year, cycle.start.month)
    assert 28 <= cycle.days <= 31
    # exactly one month later
    assert (cycle.end.year * 12 + cycle.end.month) - (cycle.start.year * 12 + cycle.start.month) == 1


@settings(max_examples=300, deadline=None)
@given(billing_day=billing_days, day=days)
def test_the_next_cycle_starts_where_a_cycle_ends(billing_day, day):
    cycle = cycle_containing(billing_day, day)
    following = next_cycle(billing_day, cycle)

    assert following.start == cycle.end
    assert following == cycle_containing(billing_day, cycle.end)
    assert following.end > following.start


@settings(max_examples=40, deadline=None)
@given(billing_day=billing_days, first_day=st.dates(min_value=D(2024, 1, 1), max_value=D(2030, 12, 31)))
def test_consecutive_cycles_tile_three_years_without_gaps_or_overlaps(billing_day, first_day):
    horizon = first_day + timedelta(days=3 * 366)
    cycles = [cycle_containing(billing_day, first_day)]
    while cycles[-1].end <= horizon:
        cycles.append(next_cycle(billing_day, cycles[-1]))

    for earlier, later in pairwise(cycles):
        assert earlier.end == later.start
    assert len(cycles) in (37, 38)

    # each day of the span belongs to exactly one cycle, and cycle_containing finds that one
    day, index = cycles[0].start, 0
    while day < cycles[-1].end:
        if day == cycles[index].end:
            index += 1
        assert [c for c in cycles if c.contains(day)] == [cycles[index]]
        assert cycle_containing(billing_day, day) == cycles[index]
        day += timedelta(days=1)


def test_cycles_ending_by_catches_up_missed_months_oldest_first():
    first = cycle_containing(15, D(2027, 1, 20))

    caught_up = cycles_ending_by(15, first, D(2027, 4, 20))

    assert caught_up == [
        Cycle(D(2027, 1, 15), D(2027, 2, 15)),
        Cycle(D(2027, 2, 15), D(2027, 3, 15)),
        Cycle(D(2027, 3, 15), D(2027, 4, 15)),
    ]


def test_cycles_ending_by_includes_a_cycle_that_ends_on_the_as_of_date():
    first = cycle_containing(1, D(2026, 11, 16))

    assert cycles_ending_by(1, first, D(2026, 12, 1)) == [Cycle(D(2026, 11, 1), D(2026, 12, 1))]
    assert cycles_ending_by(1, first, D(2026, 11, 30)) == []


def test_cycles_ending_by_clamps_each_missed_month_for_billing_day_31():
    first = cycle_containing(31, D(2027, 1, 31))

    assert [c.end for c in cycles_ending_by(31, first, D(2027, 5, 1))] == [
        D(2027, 2, 28),
        D(2027, 3, 31),
        D(2027, 4, 30),
    ]


@settings(max_examples=200, deadline=None)
@given(billing_day=billing_days, day=days, gap=st.integers(min_value=0, max_value=400))
def test_cycles_ending_by_returns_every_ended_cycle_in_order_and_nothing_more(billing_day, day, gap):
    first = cycle_containing(billing_day, day)
    as_of = day + timedelta(days=gap)

    result = cycles_ending_by(billing_day, first, as_of)

    if result:
        assert result[0] == first
    for earlier, later in pairwise(result):
        assert later == next_cycle(billing_day, earlier)
    assert all(c.end <= as_of for c in result)
    after = next_cycle(billing_day, result[-1]) if result else first
    assert after.end > as_of
