"""Committing a consumer's offsets after the batch's transaction, without holding up the next batch.

Waiting for each offset commit (a broker round trip) before the next fetch would be a large
share of every cycle at low rates. So a batch's offsets are handed to an ``OffsetCommitter``
once its transaction has committed, and the loop moves on:

- at most one commit is in flight per consumer; batches finished meanwhile are covered by the
  next commit (the highest processed offset per partition), so a fast loop sends fewer commits;
- offsets are only ever those of batches whose transaction committed, so nothing is committed
  past an unprocessed record (at-least-once);
- a commit that fails (a rebalance, the broker away) is logged and dropped: those records come
  again and the inbox deduplicates them, as it does after any crash between the two commits;
- after a commit the next one waits ``min_interval_s`` (``BILLING_OFFSET_COMMIT_INTERVAL_MS``):
  at a few hundred small batches a second, a commit per batch was a third of the broker's
  requests. A crash then redelivers at most that much more, and the inbox deduplicates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition

log = logging.getLogger(__name__)


class OffsetCommitter:
    def __init__(self, service: str, min_interval_s: float = 0.0) -> None:
        self.service = service
        self.min_interval_s = min_interval_s
        self.consumer: Any = None
        self._pending: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}  # next offset to process, per partition (for lag)
        self._task: asyncio.Task[None] | None = None

    def processed(self, consumer: Any, records: Iterable[Any]) -> None:
        """The records' effects are committed in the database: commit their offsets soon."""
        self.consumer = consumer
        last: dict[tuple[str, int], int] = {}  # plain tuples in the loop: a TopicPartition costs more
        for record in records:
            key = (record.topic, record.partition)
            if record.offset > last.get(key, -1):
                last[key] = record.offset
        pending = self._pending
        for (topic, partition), offset in last.items():
            tp = TopicPartition(topic, partition)
            if offset + 1 > pending.get(tp, -1):
                pending[tp] = offset + 1
        self.positions.update(pending)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._commit_pending(), name=f"{self.service}-offset-commit")

    async def _commit_pending(self) -> None:
        while self._pending:
            offsets, self._pending = self._pending, {}
            assigned = self.consumer.assignment()
            offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if not offsets:
                continue  # revoked meanwhile: the new owner starts from the last commit
            try:
                await self.consumer.commit(offsets)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redelivery is harmless: the inbox deduplicates
                log.warning("offset commit failed", extra={"service": self.service, "error": repr(exc)})
            if self.min_interval_s > 0:
                await asyncio.sleep(self.min_interval_s)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for the commit in flight and the pending one (on shutdown)."""
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)


def rewind(consumer: Any, records: Iterable[Any]) -> None:
    """Seek each partition back to the batch's earliest record: it is fetched again (a batch that
    failed must not be passed over by a later batch's commit)."""
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        if record.offset < earliest.get(tp, record.offset + 1):
            earliest[tp] = record.offset
    for tp, offset in earliest.items():
        with contextlib.suppress(Exception):  # not assigned any more: the new owner has it
            consumer.seek(tp, offset)
