"""The bounded record of calls a metering process committed lately."""

from __future__ import annotations

from services.usage_metering.storage import RecentCalls


def test_the_record_keeps_the_latest_calls_and_forgets_the_oldest_first() -> None:
    recent = RecentCalls(3)
    recent.add([("a", "1"), ("a", "2"), ("b", "1")])
    recent.add([("a", "2"), ("c", "9")])  # a repeat is not added twice, so it does not push others out twice
    assert len(recent) == 3
    assert ("a", "1") not in recent
    assert all(key in recent for key in [("a", "2"), ("b", "1"), ("c", "9")])


def test_a_record_of_no_capacity_keeps_nothing() -> None:
    recent = RecentCalls(0)
    recent.add([("a", "1")])
    assert len(recent) == 0 and ("a", "1") not in recent
