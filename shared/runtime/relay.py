"""The outbox relay: publishes committed outbox rows to Kafka in commit order, then deletes them.

One relay per service is active at a time (a session advisory lock), so one account's events
leave in the order they were written. Rows go out as per-partition batches. A row is deleted
only after the broker acknowledged it (``acks=all``, idempotent producer), by the same statement
that reads the next rows (one round trip per round): a crash in between publishes it again, and
consumers deduplicate on ``message_id``.

The leader wakes on the NOTIFY that every transaction writing outbox rows sends at commit, from
whichever replica; a short poll is only the fallback (e.g. a notification lost with a connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import zlib
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidTopicError, MessageSizeTooLargeError, RecordTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from contracts.topics import COMMAND_TOPICS
from shared.runtime import metrics
from shared.runtime.authentication import Signer
from shared.runtime.tables import OUTBOX_CHANNEL

log = logging.getLogger(__name__)

# The leader's connection is closed by PostgreSQL after this long idle (a frozen process), which
# releases its lock; a standby replica tries to take the lead this often.
LEADER_IDLE_TIMEOUT = "5s"
STANDBY_POLL_S = 1.0
# What the leader's connection writes is only ever the deletion of rows the broker has acknowledged
# (or their setting aside as dead letters): lost in a crash, they are published again, which
# consumers deduplicate. So its commits do not wait for the WAL to reach the disk, and a round reads
# the next rows without waiting for the last round's deletion to be flushed (on a busy disk, a flush
# takes from a few to tens of milliseconds, which every alert would wait for).
LEADER_SETTINGS = {"idle_session_timeout": LEADER_IDLE_TIMEOUT, "synchronous_commit": "off"}

MAX_BATCH_BYTES = 256 * 1024

DELETE_PUBLISHED = "delete from outbox where id = any($1::bigint[])"

# Refusals that no retry will change; anything else (time-outs, broker down, leader moving) is retried.
NEVER_DELIVERABLE = (MessageSizeTooLargeError, RecordTooLargeError, InvalidTopicError)


class OutboxRelay:
    def __init__(
        self,
        service: str,
        dsn: str,
        kafka_options: dict[str, Any],
        batch_size: int = 2000,
        poll_interval_s: float = 0.05,
        measured: bool = False,
        signer: Signer | None = None,
    ) -> None:
        """``signer``: signs what the service sends to a command topic (a cycle-close continuation)."""
        self.service = service
        self.signer = signer
        self.dsn = dsn
        self.kafka_options = kafka_options
        self.producer: AIOKafkaProducer | None = None
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.lock_key = zlib.crc32(f"outbox-relay:{service}".encode())
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.measured = measured  # publish latency into the worker's metrics

    def _notified(self, *_notification: object) -> None:
        """A commit with outbox rows, in this process or another replica (``NOTIFY outbox``)."""
        self._wake.set()

    async def start(self) -> None:
        # A broker out of reach at start-up is a failure like any other: the loop retries it.
        await self._renew_producer()
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
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._lead()  # returns only by raising
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed, retrying", extra={"service": self.service, "error": repr(exc)})
                await self._renew_producer()
                if loop.time() - started > 30:
                    backoff = 0.1  # it had been working: this is a new failure, not the same one again
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _renew_producer(self) -> None:
        """A fresh producer (a new producer id) after a failure: an idempotent producer whose batch
        the broker refused keeps failing with ``OutOfOrderSequenceNumber`` on that partition.
        The rows it had sent are published again; consumers deduplicate on ``message_id``."""
        old = self.producer
        self.producer = None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), timeout=5)
        producer = make_producer(**self.kafka_options)
        try:
            await producer.start()
        except Exception as exc:
            log.warning("outbox relay producer did not start", extra={"service": self.service, "error": repr(exc)})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=5)  # its half-open connections
            return  # the next round tries again
        self.producer = producer

    async def _lead(self) -> None:
        """Become the service's one relay (a session advisory lock on a connection of its own), then
        relay until that connection fails. The lock goes with the connection: a relay that dies, or
        is frozen longer than ``LEADER_IDLE_TIMEOUT`` (PostgreSQL closes its idle connection), hands
        over to a standby replica."""
        db = await asyncpg.connect(self.dsn, server_settings=LEADER_SETTINGS)
        try:
            while True:
                if await db.fetchval("select pg_try_advisory_lock($1)", self.lock_key):
                    break
                await asyncio.sleep(STANDBY_POLL_S)  # another replica relays
            # Commits in every replica, this one included, notify the channel: the one wake-up.
            await db.add_listener(OUTBOX_CHANNEL, self._notified)
            log.info("outbox relay leading", extra={"service": self.service})
            published: list[int] = []  # acknowledged by the broker, deleted by the next round
            try:
                while True:
                    # Clear before relaying, not after: a commit that wakes us while we relay must not be lost.
                    self._wake.clear()
                    published = await self.relay_once(db, published)
                    if len(published) < self.batch_size:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
            finally:
                if published:  # stopping: do not leave them to be published again by the next leader
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(db.execute(DELETE_PUBLISHED, published), timeout=2)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(db.close(), timeout=2)
            db.terminate()

    async def relay_once(self, db: Any, published: list[int]) -> list[int]:
        """Delete the rows the broker acknowledged last round and read the next ones, oldest first,
        in one statement; publish them; return their ids (deleted next round). Only the leader runs
        this, so reading without row locks is safe. A crash before the next round publishes the
        last rows again: consumers deduplicate on ``message_id``."""
        # The deleted rows are still visible to this statement's select: leave them out with a hashed
        # anti-join on the delete's own result (``id <> all($1)`` would compare each row with every id).
        rows = await db.fetch(
            "with published as (" + DELETE_PUBLISHED + " returning id) "
            "select id, topic, key, payload from outbox where id not in (select id from published) "
            "order by id limit $2",
            published,
            self.batch_size,
        )
        if not rows:
            return []
        started = time.perf_counter()
        failed = await self._publish(rows)
        if self.measured:
            metrics.relay_round(len(rows) - len(failed), time.perf_counter() - started)
        retry = [error for _, error in failed if not isinstance(error, NEVER_DELIVERABLE)]
        if retry:
            raise retry[0]  # the broker may take it later: publish the batch again
        if failed:
            async with db.transaction():
                for (row_id, topic, _key, payload), error in failed:
                    # The broker will never take this record (e.g. too large): keep it for operators
                    # instead of blocking every later event of the service.
                    log.error("outbox row refused by the broker", extra={"service": self.service, "error": repr(error)})
                    await db.execute(
                        'insert into dead_letters (topic, partition, "offset", record_timestamp, error, payload) '
                        "values ($1, -1, $2, 0, $3, $4) on conflict do nothing",
                        f"outbox:{topic}",
                        row_id,
                        repr(error),
                        payload,
                    )
                await db.execute(DELETE_PUBLISHED, [row["id"] for row, _ in failed])
        self.published += len(rows)
        set_aside = {row["id"] for row, _ in failed}
        return [row["id"] for row in rows if row["id"] not in set_aside]

    async def _publish(self, rows: list[Any]) -> list[tuple[Any, BaseException]]:
        """Send rows (in order) as per-partition batches; wait for the broker. Returns the rows
        that failed, with why. Per partition the order is kept: batches leave one at a time."""
        producer = self.producer
        if producer is None:
            raise ConnectionError("no Kafka producer: it did not start after the last failure")
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], tuple[Any, list[Any]]] = {}
        pending: list[tuple[list[Any], asyncio.Future[Any]]] = []
        failed: list[tuple[Any, BaseException]] = []

        async def flush(slot: tuple[str, int]) -> None:
            batch, batch_rows = open_batches.pop(slot)
            pending.append((batch_rows, await producer.send_batch(batch, slot[0], partition=slot[1])))

        for row in rows:
            _id, topic, key, payload = row
            key_bytes = key.encode() if key else None
            headers = self.signer.headers(topic, key_bytes, payload) if self.signer and topic in COMMAND_TOPICS else []
            if topic not in partitions:
                try:
                    partitions[topic] = sorted(await producer.partitions_for(topic))
                except NEVER_DELIVERABLE as refused:  # e.g. an invalid topic name
                    failed.append((row, refused))
                    continue
            slot = (topic, _partition_of(key_bytes, tuple(partitions[topic])))
            if len(payload) >= MAX_BATCH_BYTES:
                # A batch takes its first record whatever its size, and a broker refusal of a sent
                # batch breaks the idempotent producer's sequence for that partition. ``send``
                # checks ``max_request_size`` before sending; the broker decides the rest.
                if slot in open_batches:
                    await flush(slot)  # the partition's earlier rows leave first
                try:
                    sent = await producer.send(topic, value=payload, key=key_bytes, partition=slot[1], headers=headers)
                    pending.append(([row], sent))
                except NEVER_DELIVERABLE as refused:
                    failed.append((row, refused))
                continue
            for _attempt in range(2):
                if slot not in open_batches:
                    open_batches[slot] = (producer.create_batch(), [])
                batch, batch_rows = open_batches[slot]
                if batch.append(key=key_bytes, value=payload, timestamp=None, headers=headers) is not None:
                    batch_rows.append(row)
                    break
                await flush(slot)  # full: send it, then start the next batch of this partition
        for slot in list(open_batches):
            await flush(slot)
        results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        for (batch_rows, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                failed += [(row, result) for row in batch_rows]
        return failed


_PARTITIONER = DefaultPartitioner()  # the producer's own: same key, same partition as ``send``


@functools.lru_cache(maxsize=200_000)
def _partition_of(key: bytes | None, partitions: tuple[int, ...]) -> int:
    """murmur2 is pure Python in aiokafka; an account's events mostly come in twos and threes."""
    if key is None:
        return partitions[0]
    return int(_PARTITIONER(key, list(partitions), list(partitions)))


def make_producer(**kafka_options: object) -> AIOKafkaProducer:
    """A producer that loses nothing: every in-sync replica acknowledges, retries never duplicate."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # the relay batches per partition itself
        max_batch_size=MAX_BATCH_BYTES,
        request_timeout_ms=30000,
        **kafka_options,
    )
