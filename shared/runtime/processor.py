"""Batch processing with an exactly-once effect: inbox, state change and outbox in one transaction.

For each batch of records a subscriber receives:

1. records whose envelope cannot be read become dead letters;
2. one transaction claims the batch's ``message_id``s in the inbox (set-based, duplicates
   skipped), runs the service's handlers for the new ones, writes their events and the
   dead letters to the outbox, and commits;
3. only then does the caller acknowledge (commit the Kafka offsets).

A transient failure (database or network down) retries the batch with backoff; any other
failure splits the batch so that one bad message is dead-lettered alone and the others pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import asyncpg
import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import Command, Envelope, Event
from contracts.messages import CommandRejected
from contracts.topics import BY_NAME
from shared.db import driver_connection
from shared.rejections import Rejected
from shared.runtime.codec import KafkaRecord, Unreadable, dead_letter_payload, describe, parse_model, read_envelope
from shared.runtime.tables import OUTBOX_CHANNEL

log = logging.getLogger(__name__)

WRITE_OUTBOX = (
    "with written as (insert into outbox (message_id, topic, key, payload) "
    "select * from unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])) "
    f"select pg_notify('{OUTBOX_CHANNEL}', '')"
)
CLAIM_INBOX = (
    "insert into inbox (message_id, topic) select * from unnest($1::uuid[], $2::text[]) "
    "on conflict do nothing returning message_id"
)

M = TypeVar("M", bound=Envelope)
Handler = Callable[["UnitOfWork[Any, Any]", Any], Awaitable[None]]
BatchHandler = Callable[["UnitOfWork[Any, Any]", list[Any]], Awaitable[None]]
StoreFactory = Callable[[AsyncSession], Any]

# Which reason code a validation error on a field gets (contract.md lists the codes).
REASON_CODE_BY_FIELD = {"product": "unknown_product", "quantity": "invalid_quantity", "cap": "invalid_cap"}


class ConcurrentUpdate(Exception):
    """A handler found that state it read was changed by another transaction before it wrote
    (optimistic concurrency): the batch is rolled back and retried like a transient failure."""


class UnknownAccount(Exception):
    """An event names an account this service has not heard of yet: park it until it opens."""


S = TypeVar("S", covariant=True)
T = TypeVar("T", covariant=True)


class UnitOfWork(Protocol[S, T]):
    """What a handler gets: the service's store and settings, and the transaction's runtime
    (events to publish when it commits, parking, per-account locks). The processor's ``Unit``
    is the real one; tests hand handlers an in-memory one."""

    @property
    def store(self) -> S: ...

    @property
    def settings(self) -> T: ...

    def emit(self, topic: str, event: Event | Command) -> None: ...

    def resend(self, topic: str, payload: bytes) -> None: ...

    def payload_of(self, message: Envelope) -> bytes: ...

    async def lock_account(self, account_id: str) -> None: ...

    async def park(self, topic: str, message: Envelope) -> None: ...

    async def release_parked(self, account_id: str) -> list[Envelope]: ...


@dataclass
class Unit:
    """One transaction's worth of work: the session, the service's store on it, the settings, and
    the events to publish when it commits."""

    session: AsyncSession
    store: Any = None
    settings: Any = None
    outbox: list[tuple[uuid.UUID, str, str, bytes]] = field(default_factory=list)
    received: dict[uuid.UUID, bytes | None] = field(default_factory=dict)
    _driver: Any = None

    async def db(self) -> Any:
        """The asyncpg connection in this unit's transaction, for the hot statements."""
        if self._driver is None:
            self._driver = await driver_connection(self.session)
        return self._driver

    def payload_of(self, message: Envelope) -> bytes:
        """The JSON a batch handler's message arrived as (no second dump to keep it as received)."""
        raw = self.received.get(message.message_id)
        return raw if raw is not None else message.model_dump_json().encode()

    def emit(self, topic: str, event: Event | Command) -> None:
        self.outbox.append((event.message_id, topic, event.account_id, event.model_dump_json().encode()))

    def resend(self, topic: str, payload: bytes) -> None:
        """An event sent before, sent again byte for byte (a repeated request answered the same)."""
        sent = Envelope.model_validate_json(payload)
        self.outbox.append((sent.message_id, topic, sent.account_id, payload))

    async def lock_account(self, account_id: str) -> None:
        """Serialise with other transactions about this account (parking vs. opening it)."""
        await self.session.execute(sa.text("select pg_advisory_xact_lock(hashtext(:a))"), {"a": account_id})

    async def park(self, topic: str, message: Envelope) -> None:
        """Keep an event for an account not opened yet; ``release_parked`` hands it back later."""
        await self.session.execute(
            sa.text("insert into parked (account_id, topic, payload) values (:a, :t, :p)"),
            {"a": message.account_id, "t": topic, "p": message.model_dump_json().encode()},
        )

    async def release_parked(self, account_id: str) -> list[Envelope]:
        rows = (
            await self.session.execute(
                sa.text("delete from parked where account_id = :a returning id, topic, payload"), {"a": account_id}
            )
        ).all()
        released = []
        for _id, topic, payload in sorted(rows):
            envelope = Envelope.model_validate_json(payload)
            model = BY_NAME[topic].model_for(envelope.type)
            if model is not None:
                released.append(model.model_validate_json(payload))
        return released

    async def flush(self) -> None:
        if not self.outbox:
            return
        ids, topics, keys, payloads = zip(*self.outbox, strict=True)
        # The notification is delivered at commit, to the relay leader of this service (whichever
        # replica it runs in): rows wait for no poll. Same statement, so no extra round trip.
        await (await self.db()).execute(WRITE_OUTBOX, list(ids), list(topics), list(keys), list(payloads))


class HandlerRegistry:
    """Maps message types to a service's handlers: one at a time, or a whole batch at once."""

    def __init__(self) -> None:
        self.single: dict[str, Handler] = {}
        self.batch: dict[str, BatchHandler] = {}
        self.deduplicated_by_handler: set[str] = set()

    def on(self, model: type[M]) -> Callable[[Callable[[Any, M], Awaitable[None]]], Any]:
        def register(handler: Callable[[Any, M], Awaitable[None]]) -> Any:
            self.single[model.model_fields["type"].default] = handler
            return handler

        return register

    def on_batch(
        self, model: type[M], deduplicates: bool = False
    ) -> Callable[[Callable[[Any, list[M]], Awaitable[None]]], Any]:
        """``deduplicates=True``: the handler records each message by a business key in the same
        transaction (e.g. a call id) and ignores repeats, so the inbox row would only repeat it."""

        def register(handler: Callable[[Any, list[M]], Awaitable[None]]) -> Any:
            self.batch[model.model_fields["type"].default] = handler
            if deduplicates:
                self.deduplicated_by_handler.add(model.model_fields["type"].default)
            return handler

        return register

    def wants(self, topic: str, message_type: str) -> bool:
        """False for a type the topic carries but this service has no handler for (e.g. cycle close
        reading ``licensing.events`` only for the seals): skipped without an inbox row. A type
        the topic does not carry is wanted: it gets its rejection or dead letter."""
        if message_type in self.single or message_type in self.batch:
            return True
        carried = BY_NAME.get(topic)
        return carried is None or carried.model_for(message_type) is None

    async def dispatch(self, unit: UnitOfWork[Any, Any], message: Envelope) -> None:
        """Run the single-message handler for ``message`` (used to replay parked messages too)."""
        handler = self.single.get(message.type)
        if handler is not None:
            await handler(unit, message)
        elif message.type in self.batch:
            await self.batch[message.type](unit, [message])


class _ForAccount(Protocol):
    @property
    def account_id(self) -> str: ...


A = TypeVar("A", bound=_ForAccount)


def one_per_account(messages: Sequence[A]) -> list[list[A]]:
    """Split a batch into rounds in which each account appears at most once, keeping each
    account's order: a set-based handler then runs round by round (e.g. catch-up seals)."""
    rounds: list[list[A]] = []
    seen_in: dict[str, int] = {}
    for message in messages:
        index = seen_in.get(message.account_id, -1) + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(message)
        seen_in[message.account_id] = index
    return rounds


TRANSIENT_SQLSTATES = ("08", "40", "53", "57P")  # connection, rollback (serialization, deadlock), resources, shutdown


def is_transient(exc: BaseException) -> bool:
    """Failures that go away by themselves: retry the same batch rather than dead-letter it.

    The error may come wrapped (SQLAlchemy's ``DBAPIError`` around its adapted DBAPI error around
    asyncpg's), or bare from a statement sent on the driver connection: each link of the chain
    is looked at until one decides.
    """
    error: BaseException | None = exc
    for _ in range(5):
        if error is None:
            return False
        verdict = _transient(error)
        if verdict is not None:
            return verdict
        error = getattr(error, "orig", None) or error.__cause__
    return False


def _transient(error: BaseException) -> bool | None:
    """True or False when this error decides; None to look at what it wraps."""
    if isinstance(error, ConcurrentUpdate):
        return True
    if isinstance(error, sa.exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa.exc.InterfaceError | sa.exc.OperationalError):
            return True
        return None
    if isinstance(error, asyncpg.PostgresError):
        return str(error.sqlstate or "").startswith(TRANSIENT_SQLSTATES)
    if isinstance(error, asyncpg.InterfaceError) and "connection is closed" in str(error):
        return True
    if isinstance(error, OSError | ConnectionError | TimeoutError | sa.exc.TimeoutError):
        return True
    return None


@dataclass
class CrashPoints:
    """Fault injection for the crash tests: die like SIGKILL (no clean-up) in the Nth batch,
    just before its database commit or just after it (before the Kafka offsets are committed).
    0 = never. Set through ``BILLING_FAULT_CRASH_BEFORE_COMMIT`` / ``..._AFTER_COMMIT``."""

    before_commit: int = 0
    after_commit: int = 0
    batches: int = 0

    def check(self, point: str) -> None:
        if getattr(self, point) and self.batches == getattr(self, point):
            log.error("fault injection: crashing %s of batch %d", point.replace("_", " "), self.batches)
            logging.shutdown()
            os._exit(137)


class BatchProcessor:
    def __init__(
        self,
        service: str,
        sessions: async_sessionmaker[AsyncSession],
        registry: HandlerRegistry,
        max_backoff_s: float = 5.0,
        crash_points: CrashPoints | None = None,
        store: StoreFactory | None = None,
        settings: Any = None,
    ) -> None:
        self.service = service
        self.sessions = sessions
        self.registry = registry
        self.store = store
        self.settings = settings
        self.max_backoff_s = max_backoff_s
        self.crash_points = crash_points or CrashPoints()

    async def process(self, records: Sequence[KafkaRecord]) -> None:
        """Process a batch until its effect is committed; returns only then (or raises on cancel)."""
        backoff = 0.05
        while True:
            try:
                await self._process_once(records)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc):
                    log.warning(
                        "transient failure, retrying batch",
                        extra={"service": self.service, "batch_size": len(records), "error": repr(exc)},
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
                if len(records) > 1:
                    log.warning("batch failed, isolating the bad message", extra={"error": repr(exc)})
                    for record in records:
                        await self.process([record])
                    return
                log.exception("message failed; dead-lettering it", extra=_context(records[0]))
                await self._dead_letter_alone(records[0], f"processing failed: {exc!r}")
                return

    async def _dead_letter_alone(self, record: KafkaRecord, error: str) -> None:
        backoff = 0.05
        while True:
            try:
                async with self.sessions() as session, session.begin():
                    unit = Unit(session)
                    await self._write_dead_letters(unit, [(record, error)])
                    await unit.flush()
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _process_once(self, records: Sequence[KafkaRecord]) -> None:
        dead: list[tuple[KafkaRecord, str]] = []
        readable: list[tuple[KafkaRecord, Envelope, Envelope | None]] = []
        whole = _parse_all(records)
        if whole is not None:
            readable = [(record, message, message) for record, message in zip(records, whole, strict=True)]
            records = ()  # every record is read
        for record in records:
            parsed = _parse_fast(record)
            if parsed is not None:
                readable.append((record, parsed, parsed))
                continue
            try:
                envelope = read_envelope(record)
            except Unreadable as exc:
                dead.append((record, str(exc)))
                continue
            if not self.registry.wants(record.topic, envelope.type):
                continue  # a message of its topic this service has no use for: no inbox row, no effect
            readable.append((record, envelope, None))
        if not readable and not dead:
            return

        async with self.sessions() as session, session.begin():
            unit = self.unit(session)
            self_deduplicating = self.registry.deduplicated_by_handler
            new_ids = await _claim(unit, [(r, e) for r, e, _ in readable if e.type not in self_deduplicating])
            new_ids |= {e.message_id for _, e, _ in readable if e.type in self_deduplicating}
            batched: dict[str, list[Envelope]] = {}
            for record, envelope, parsed in readable:
                if envelope.message_id not in new_ids:
                    continue  # processed before, or twice in this batch: no second effect
                new_ids.discard(envelope.message_id)
                message = parsed or self._parse(unit, record, envelope, dead)
                if message is None:
                    continue
                if message.type in self.registry.batch:
                    batched.setdefault(message.type, []).append(message)
                    unit.received[message.message_id] = record.value
                    continue
                handler = self.registry.single.get(message.type)
                if handler is None:
                    continue  # a type this service does not need
                try:
                    await handler(unit, message)
                except Rejected as rejection:
                    self._reject(unit, record, message, rejection.reason_code, rejection.reason, dead)
                except UnknownAccount:
                    await unit.park(record.topic, message)
            for message_type, messages in batched.items():
                await self.registry.batch[message_type](unit, messages)
            await self._write_dead_letters(unit, dead)
            await unit.flush()
            self.crash_points.batches += 1
            self.crash_points.check("before_commit")
        self.crash_points.check("after_commit")

    def unit(self, session: AsyncSession) -> Unit:
        """A unit of work on ``session`` with the service's store on it."""
        return Unit(session, None if self.store is None else self.store(session), self.settings)

    def _parse(
        self, unit: Unit, record: KafkaRecord, envelope: Envelope, dead: list[tuple[KafkaRecord, str]]
    ) -> Envelope | None:
        try:
            message = parse_model(record, envelope)
        except ValidationError as exc:
            fields = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
            code = next((REASON_CODE_BY_FIELD[f] for f in fields if f in REASON_CODE_BY_FIELD), "invalid_command")
            self._reject(unit, record, envelope, code, describe(exc), dead)
            return None
        if message is None:
            self._reject(unit, record, envelope, "unknown_command", f"{record.topic} carries no {envelope.type}", dead)
        return message

    def _reject(
        self,
        unit: Unit,
        record: KafkaRecord,
        message: Envelope,
        code: str,
        reason: str,
        dead: list[tuple[KafkaRecord, str]],
    ) -> None:
        topic = BY_NAME.get(record.topic)
        if topic is None or topic.rejections_to is None:
            dead.append((record, f"{code}: {reason}"))  # an invalid event: the sender has no reply topic
            return
        unit.emit(
            topic.rejections_to,
            CommandRejected(
                message_id=uuid.uuid4(),
                account_id=message.account_id,
                occurred_at=message.occurred_at,
                causation_id=message.message_id,
                command_type=message.type,
                reason_code=code,
                reason=reason,
            ),
        )

    async def _write_dead_letters(self, unit: Unit, dead: list[tuple[KafkaRecord, str]]) -> None:
        for record, error in dead:
            log.warning("dead letter", extra=_context(record) | {"error": error})
            payload = dead_letter_payload(record, error, self.service)
            inserted = (
                await unit.session.execute(
                    sa.text(
                        'insert into dead_letters (topic, partition, "offset", record_timestamp, error, payload) '
                        "values (:t, :p, :o, :ts, :e, :v) on conflict do nothing returning id"
                    ),
                    {
                        "t": record.topic,
                        "p": record.partition,
                        "o": record.offset,
                        "ts": record.timestamp or 0,
                        "e": error,
                        "v": record.value or b"",
                    },
                )
            ).first()
            if inserted is not None:  # a redelivered poison message gives one DLQ record
                key = record.key.decode("utf-8", "replace") if record.key else ""
                unit.outbox.append((uuid.uuid4(), f"{record.topic}.dlq", key, payload))


_LIST_OF: dict[type[Envelope], TypeAdapter[list[Any]]] = {}


def _parse_all(records: Sequence[KafkaRecord]) -> list[Envelope] | None:
    """A whole batch of one single-type topic (``usage.calls``) in one parse: the records' JSON
    joined into one array, about half the cost of a parse per record. None when the batch mixes
    topics or any record does not parse: then each record goes its own way (and a bad one to
    the DLQ) as before."""
    if len(records) < 2:
        return None
    topic = BY_NAME.get(records[0].topic)
    if topic is None or len(topic.messages) != 1:
        return None
    values = [r.value for r in records if r.topic == topic.name and r.value]
    # Each value one object: no string can run across the separator (JSON strings hold no raw
    # newline), and a record cut in two or holding two objects fails the shape or the count.
    if len(values) != len(records) or not all(v[:1] == b"{" and v[-1:] == b"}" for v in values):
        return None
    model = topic.messages[0]
    adapter = _LIST_OF.get(model)
    if adapter is None:
        adapter = _LIST_OF[model] = TypeAdapter(list[model])  # type: ignore[valid-type]
    try:
        parsed = adapter.validate_json(b"[" + b"\n,".join(values) + b"]")
    except ValidationError:
        return None
    return parsed if len(parsed) == len(records) else None


def _parse_fast(record: KafkaRecord) -> Envelope | None:
    """One parse instead of two on a topic that carries a single message type (the hot path of
    ``usage.calls``); None sends the record down the careful path (envelope first, then content)."""
    topic = BY_NAME.get(record.topic)
    if topic is None or len(topic.messages) != 1 or not record.value:
        return None
    try:
        return topic.messages[0].model_validate_json(record.value)
    except ValidationError:
        return None


async def _claim(unit: Unit, readable: list[tuple[KafkaRecord, Envelope]]) -> set[uuid.UUID]:
    """Insert the batch's message ids into the inbox; return those that were not there yet."""
    if not readable:
        return set()
    rows = await (await unit.db()).fetch(
        CLAIM_INBOX, [e.message_id for _, e in readable], [r.topic for r, _ in readable]
    )
    return {row[0] for row in rows}


def _context(record: KafkaRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


__all__ = ["BatchProcessor", "Command", "ConcurrentUpdate", "HandlerRegistry", "Rejected", "Unit", "UnknownAccount"]
