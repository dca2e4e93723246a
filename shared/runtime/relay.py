"""The outbox relay: publishes committed outbox rows to Kafka in commit order, then deletes them.

One relay per service is active at a time (a PostgreSQL advisory lock), so one account's
events leave in the order they were written. A row is deleted only after the broker
acknowledged it (``acks=all``, idempotent producer): a crash in between publishes it again,
and consumers deduplicate on ``message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidTopicError, MessageSizeTooLargeError, RecordTooLargeError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

# Refusals that no retry will change; anything else (time-outs, broker down, leader moving) is retried.
NEVER_DELIVERABLE = (MessageSizeTooLargeError, RecordTooLargeError, InvalidTopicError)


class OutboxRelay:
    def __init__(
        self,
        service: str,
        sessions: async_sessionmaker[AsyncSession],
        kafka_options: dict[str, Any],
        batch_size: int = 2000,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.service = service
        self.sessions = sessions
        self.kafka_options = kafka_options
        self.producer: AIOKafkaProducer | None = None
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.lock_key = zlib.crc32(f"outbox-relay:{service}".encode())
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self.producer = make_producer(**self.kafka_options)
        await self.producer.start()
        self._task = asyncio.create_task(self._run(), name=f"{self.service}-outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.producer is not None:
            await self.producer.stop()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            # Clear before relaying, not after: a commit that wakes us while we relay must not be lost.
            self._wake.clear()
            try:
                sent = await self.relay_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed, retrying", extra={"service": self.service, "error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent < self.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)

    async def relay_once(self) -> int:
        """Publish one batch of unpublished rows; returns how many."""
        async with self.sessions() as session, session.begin():
            leader = await session.scalar(sa.text("select pg_try_advisory_xact_lock(:k)"), {"k": self.lock_key})
            if not leader:
                return 0
            rows = (
                await session.execute(
                    sa.text("select id, topic, key, payload from outbox order by id limit :n for update"),
                    {"n": self.batch_size},
                )
            ).all()
            if not rows:
                return 0
            assert self.producer is not None, "start() the relay first"
            pending: list[tuple[Any, asyncio.Future[Any]]] = []
            failed: list[tuple[Any, BaseException]] = []
            for row in rows:
                _id, topic, key, payload = row
                try:
                    pending.append(
                        (row, await self.producer.send(topic, value=payload, key=key.encode() if key else None))
                    )
                except NEVER_DELIVERABLE as refused:  # refused before sending (e.g. over max_request_size)
                    failed.append((row, refused))
            results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
            failed += [(row, r) for (row, _), r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
            retry = [error for _, error in failed if not isinstance(error, NEVER_DELIVERABLE)]
            if retry:
                raise retry[0]  # the broker may take it later: retry the batch
            for (row_id, topic, _key, payload), error in failed:
                # The broker will never take this record (e.g. too large): keep it for operators
                # instead of blocking every later event of the service.
                log.error("outbox row refused by the broker", extra={"service": self.service, "error": repr(error)})
                await session.execute(
                    sa.text(
                        'insert into dead_letters (topic, partition, "offset", record_timestamp, error, payload) '
                        "values (:t, -1, :o, 0, :e, :p) on conflict do nothing"
                    ),
                    {"t": f"outbox:{topic}", "o": row_id, "e": repr(error), "p": payload},
                )
            await session.execute(sa.text("delete from outbox where id = any(:ids)"), {"ids": [r[0] for r in rows]})
        self.published += len(rows)
        return len(rows)


def make_producer(**kafka_options: object) -> AIOKafkaProducer:
    """A producer that loses nothing: every in-sync replica acknowledges, retries never duplicate."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=30000,
        **kafka_options,
    )
