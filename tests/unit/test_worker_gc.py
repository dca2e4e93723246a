"""The worker says when a cyclic-GC pass stopped it long enough to show in latency."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator

import pytest

from shared.runtime import worker


def test_a_long_collection_is_logged_and_a_short_one_is_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shared.runtime.worker")
    worker._log_long_collections("start", {"generation": 2})
    worker._log_long_collections("stop", {"generation": 2, "collected": 0})
    assert not caplog.records

    worker._log_long_collections("start", {"generation": 2})
    time.sleep(worker.LONG_COLLECTION_S * 2)
    worker._log_long_collections("stop", {"generation": 2, "collected": 7})
    [record] = caplog.records
    assert record.getMessage() == "long garbage collection"
    assert record.generation == 2 and record.collected == 7 and record.ms >= worker.LONG_COLLECTION_S * 1000  # type: ignore[attr-defined]


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)
    while worker._log_long_collections in gc.callbacks:
        gc.callbacks.remove(worker._log_long_collections)


def test_tuning_freezes_what_exists_and_spaces_out_young_collections(restore_gc: None) -> None:
    gc.unfreeze()
    worker.tune_garbage_collector(50_000)
    assert gc.get_threshold()[0] == 50_000
    assert gc.get_freeze_count() > 0
    worker.tune_garbage_collector(50_000)  # again (a second app in one process): one callback
    assert gc.callbacks.count(worker._log_long_collections) == 1


def test_zero_keeps_pythons_thresholds(restore_gc: None) -> None:
    before = gc.get_threshold()
    worker.tune_garbage_collector(0)
    assert gc.get_threshold() == before
