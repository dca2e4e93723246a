"""The meters a worker holds in memory: by account and the epoch they were read at; what is
behind its snapshot; what a batch found stale."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from services.usage_metering.domain import Meter, in_micros
from services.usage_metering.storage import MeterMemory, Tracked
from shared.cycles import Cycle

NOV = Cycle(date(2026, 11, 1), date(2026, 12, 1))
DEC = Cycle(date(2026, 12, 1), date(2027, 1, 1))


def tracked(billable: str, position: int, saved: int = 0, cycle: Cycle = NOV) -> Tracked:
    return Tracked(in_micros(Meter(cap=Decimal("250.00"), billable=Decimal(billable))), cycle, position, saved)


def test_a_meter_is_held_at_the_epoch_its_account_was_read_at_and_dropped_when_the_epoch_moves() -> None:
    memory = MeterMemory()
    memory.apply({("a", NOV.start): tracked("5", 2), ("a", DEC.start): tracked("1", 1, cycle=DEC)}, {"a": 0})

    assert memory.get("a", 0, NOV.start) == tracked("5", 2)
    assert memory.get("a", 1, NOV.start) is None  # a cap change or a seal since: read it again
    assert memory.get("a", 0, DEC.start) is None  # and all of the account's meters went with it
    assert len(memory) == 0


def test_what_is_behind_its_snapshot_is_written_back_and_then_no_longer() -> None:
    memory = MeterMemory(snapshot_batches=2)
    memory.apply(
        {("a", NOV.start): tracked("5", 2, saved=0), ("b", NOV.start): tracked("3", 4, saved=4)}, {"a": 0, "b": 0}
    )
    assert not memory.snapshot_due.is_set()
    memory.apply({("c", NOV.start): tracked("1", 1, saved=0)}, {"c": 3})
    assert memory.snapshot_due.is_set()  # two batches since the last snapshot

    unsaved = memory.unsaved()

    assert sorted(account for account, _ in unsaved) == ["a", "c"]
    assert not memory.snapshot_due.is_set()
    memory.saved("a", NOV.start, 2)
    memory.saved("c", NOV.start, 1)
    assert memory.unsaved() == []


def test_a_snapshot_taken_before_a_later_batch_leaves_that_batch_unsaved() -> None:
    memory = MeterMemory()
    memory.apply({("a", NOV.start): tracked("5", 2)}, {"a": 0})
    [(_, taken)] = memory.unsaved()
    memory.apply({("a", NOV.start): tracked("9", 3)}, {"a": 0})  # committed while the snapshot was written

    memory.saved("a", NOV.start, taken.position)

    assert [(a, t.position, t.saved) for a, t in memory.unsaved()] == [("a", 3, 2)]


def test_accounts_a_batch_found_stale_are_forgotten_unless_it_folded_them_again() -> None:
    memory = MeterMemory()
    memory.apply({("a", NOV.start): tracked("5", 2), ("b", NOV.start): tracked("7", 3)}, {"a": 0, "b": 0})

    memory.apply({("b", NOV.start): tracked("20", 9)}, {"b": 0}, stale={"a", "b"})

    assert memory.get("a", 0, NOV.start) is None
    assert memory.get("b", 0, NOV.start) == tracked("20", 9)


def test_a_meter_folded_beside_another_fold_of_it_is_forgotten() -> None:
    memory = MeterMemory()
    memory.apply({("a", NOV.start): tracked("5", 4)}, {"a": 0})

    memory.apply({("a", NOV.start): tracked("6", 3)}, {"a": 0})  # from a base behind what memory holds

    assert memory.get("a", 0, NOV.start) is None
