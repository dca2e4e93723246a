"""The bounded record of calls a metering process committed lately."""

from __future__ import annotations

from services.usage_metering.storage import RecentCalls


def _keys(first: int, count: int) -> list[tuple[str, str]]:
    return [("a", str(n)) for n in range(first, first + count)]


def test_the_record_holds_the_latest_half_of_its_capacity_and_forgets_the_oldest_first() -> None:
    recent = RecentCalls(10)
    for first in range(0, 100, 3):  # batches of 3: 0-2, 3-5, ...
        recent.add(_keys(first, 3))
        latest = _keys(max(0, first + 3 - 5), min(5, first + 3))  # the last 5 pairs added
        assert all(key in recent for key in latest)
        assert len(recent) <= 10 + 3  # at most its capacity and one batch
    assert ("a", "0") not in recent and ("a", "50") not in recent  # long gone


def test_a_repeat_added_again_counts_once() -> None:
    recent = RecentCalls(100)
    recent.add([("a", "1"), ("a", "2")])
    recent.add([("a", "2"), ("c", "9")])
    assert len(recent) == 3 and all(key in recent for key in [("a", "1"), ("a", "2"), ("c", "9")])


def test_a_record_of_no_capacity_keeps_nothing() -> None:
    recent = RecentCalls(0)
    recent.add([("a", "1")])
    assert len(recent) == 0 and ("a", "1") not in recent
