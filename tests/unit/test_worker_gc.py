"""The worker and the cyclic garbage collector: what it freezes, what it logs, what it is left to free."""

from __future__ import annotations

import gc
import logging
import time
import weakref
from collections.abc import Iterator

import pytest
from faststream.kafka.message import KafkaMessage

from shared.runtime import worker
from shared.runtime.codec import Record


def test_a_long_collection_is_logged_and_a_short_one_is_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shared.runtime.worker")
    worker._log_long_collections("start", {"generation": 2})
    worker._log_long_collections("stop", {"generation": 2, "collected": 0})
    assert not caplog.records

    worker._log_long_collections("start", {"generation": 2})
    time.sleep(worker.LONG_COLLECTION_S * 2)
    worker._log_long_collections("stop", {"generation": 2, "collected": 7})
    [record] = caplog.records
    assert isinstance(record.args, tuple)
    generation, ms, collected = record.args
    assert (generation, collected) == (2, 7) and float(ms) >= worker.LONG_COLLECTION_S * 1000  # type: ignore[arg-type]
    assert record.getMessage().startswith("long garbage collection: generation 2, ")
    assert record.getMessage().endswith(" ms, 7 objects collected")


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


async def test_a_batch_is_freed_as_soon_as_it_is_handled_without_waiting_for_the_collector() -> None:
    """FastStream caches the decoded value on its message: the handler's value must not point back
    at the message, or every batch (and its records) waits for a cyclic-GC pass to be freed."""
    record = Record("licensing.commands", 0, 7, b"acct-1", b"{}")
    consumer = object()
    gc.disable()
    try:
        message = KafkaMessage(raw_message=(record,), body=[record.value], consumer=consumer)  # type: ignore[arg-type]
        message.set_decoder(worker._records_and_consumer)
        batch = await message.decode()
        assert batch == worker.Fetched((record,), consumer)
        assert await message.decode() is batch  # the framework's cache holds it
        gone = weakref.ref(message)
        del message, batch
        assert gone() is None
    finally:
        gc.enable()
