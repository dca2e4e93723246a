"""Billing-cycle date arithmetic (pure): monthly cycles that start on an account's billing day.

A cycle is the half-open UTC date range ``[start, end)``; in a month too short for the
billing day the cycle starts on the month's last day (billing day 31: Jan 31, Feb 28, Mar 31).
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, order=True)
class Cycle:
    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def contains(self, day: date) -> bool:
        return self.start <= day < self.end


def cycle_start_in_month(billing_day: int, year: int, month: int) -> date:
    """The day a cycle starts in the given month: the billing day, clamped to the month's end."""
    if not 1 <= billing_day <= 31:
        raise ValueError(f"billing_day must be 1..31, got {billing_day}")
    last = calendar.monthrange(year, month)[1]
    return date(year, month, min(billing_day, last))


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


@functools.lru_cache(maxsize=65536)
def cycle_containing(billing_day: int, day: date) -> Cycle:
    """The cycle of an account with this billing day that contains ``day``."""
    start = cycle_start_in_month(billing_day, day.year, day.month)
    if day < start:
        year, month = _shift_month(day.year, day.month, -1)
        start = cycle_start_in_month(billing_day, year, month)
    year, month = _shift_month(start.year, start.month, 1)
    return Cycle(start, cycle_start_in_month(billing_day, year, month))


def next_cycle(billing_day: int, cycle: Cycle) -> Cycle:
    """The cycle that starts where ``cycle`` ends."""
    return cycle_containing(billing_day, cycle.end)


def cycles_ending_by(billing_day: int, first: Cycle, as_of: date) -> list[Cycle]:
    """Every cycle from ``first`` on whose end is on or before ``as_of``, oldest first."""
    result: list[Cycle] = []
    cycle = first
    while cycle.end <= as_of:
        result.append(cycle)
        cycle = next_cycle(billing_day, cycle)
    return result
