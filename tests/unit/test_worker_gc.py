"""The worker says when a cyclic-GC pass stopped it long enough to show in latency."""

from __future__ import annotations

import logging
import time

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
