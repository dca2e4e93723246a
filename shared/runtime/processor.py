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
import uuid
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import Command, Envelope
from contracts.messages import CommandRejected
from contracts.topics import BY_NAME
from shared.rejections import Rejected
from shared.runtime.authentication import TrustedKeys, command_refusal
from shared.runtime.codec import KafkaRecord, Unreadable, describe, list_decoder, parse_model, read_envelope
from shared.runtime.crash_points import CrashPoints
from shared.runtime.dead_letters import record_context, record_dead_letters
from shared.runtime.metrics import BatchMetrics
from shared.runtime.registry import HandlerRegistry
from shared.runtime.retention import CLAIM_INBOX
from shared.runtime.transient import is_transient
from shared.runtime.unit_of_work import StoreFactory, Unit

log = logging.getLogger(__name__)

UNCLAIM_INBOX = "delete from inbox where message_id = any($1::uuid[])"

# Which reason code a validation error on a field gets (contract.md lists the codes).
REASON_CODE_BY_FIELD = {"product": "unknown_product", "quantity": "invalid_quantity", "cap": "invalid_cap"}


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
        metrics: BatchMetrics | None = None,
        trusted_keys: TrustedKeys | None = None,
    ) -> None:
        """``trusted_keys``: whose signed commands to believe (the worker always gives it; ``None``
        only for tests of the runtime itself)."""
        self.service = service
        self.trusted_keys = trusted_keys
        self.sessions = sessions
        self.registry = registry
        self.store = store
        self.settings = settings
        self.max_backoff_s = max_backoff_s
        self.crash_points = crash_points or CrashPoints()
        self.metrics = metrics

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
                log.exception("message failed; dead-lettering it", extra=record_context(records[0]))
                await self._dead_letter_alone(records[0], f"processing failed: {exc!r}")
                return

    async def _dead_letter_alone(self, record: KafkaRecord, error: str) -> None:
        backoff = 0.05
        while True:
            try:
                async with self.sessions() as session, session.begin():
                    unit = Unit(session)
                    await record_dead_letters(unit, self.service, [(record, error)])
                    await unit.flush()
                if self.metrics is not None:
                    self.metrics.committed([record], unit.outcomes, unit.counted, one_topic=True)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _process_once(self, records: Sequence[KafkaRecord]) -> None:
        dead: list[tuple[KafkaRecord, str]] = []
        readable: list[tuple[KafkaRecord, Envelope, Envelope | None]] = []
        batch, ignored = records, Tally[tuple[str, str]]()
        whole, straight = _parse_all(records, self.registry)
        if whole is not None:
            if straight is None:
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
                ignored[(record.topic, "ignored")] += 1
                continue  # a message of its topic this service has no use for: no inbox row, no effect
            readable.append((record, envelope, None))
        if not readable and not dead and straight is None:
            if self.metrics is not None:
                self.metrics.committed(batch, ignored, (), one_topic=False)
            return

        async with self.sessions() as session, session.begin():
            unit = self.unit(session)
            unit.outcomes = ignored  # the records skipped before the transaction
            self_deduplicating = self.registry.deduplicated_by_handler
            batched: dict[str, list[Envelope]] = {}
            if straight is not None:  # the whole batch goes to its handler as it is (``usage.calls``)
                messages, unit.received, repeated = straight
                batched[messages[0].type] = messages
                if repeated:
                    unit.outcomes[(batch[0].topic, "duplicate")] += repeated
            new_ids = await _claim(unit, [(r, e) for r, e, _ in readable if e.type not in self_deduplicating])
            new_ids |= {e.message_id for _, e, _ in readable if e.type in self_deduplicating}
            for record, envelope, parsed in readable:
                if envelope.message_id not in new_ids:
                    unit.outcomes[(record.topic, "duplicate")] += 1
                    continue  # processed before, or twice in this batch: no second effect
                new_ids.discard(envelope.message_id)
                message = parsed or self._parse(unit, record, envelope, dead)
                if message is None:
                    continue
                if (refusal := command_refusal(self.trusted_keys, record, message)) is not None:
                    self._reject(unit, record, message, "not_authorized", refusal, dead)
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
            for message_type, messages in batched.items():
                await self.registry.batch[message_type](unit, messages)
            await record_dead_letters(unit, self.service, dead)
            if unit.unclaimed:
                await (await unit.db()).execute(UNCLAIM_INBOX, unit.unclaimed)
            await unit.flush()
            self.crash_points.batches += 1
            self.crash_points.check("before_commit")
        self.crash_points.check("after_commit")
        if self.metrics is not None:
            self.metrics.committed(batch, unit.outcomes, unit.counted, one_topic=whole is not None)

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
            unit.unclaimed.append(message.message_id)
            return
        unit.outcomes[(record.topic, "rejected")] += 1
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


_LIST_OF: dict[type[Envelope], Callable[[bytes], list[Any]]] = {}


# A batch for its handler as it came: the messages (each message id once), each one's JSON, and
# how many copies of a message already in the batch were left out.
Straight = tuple[list[Any], dict[uuid.UUID, bytes | None], int]


def _parse_all(records: Sequence[KafkaRecord], registry: HandlerRegistry) -> tuple[list[Any] | None, Straight | None]:
    """A whole batch of one single-type topic (``usage.calls``) in one parse: the records' JSON
    joined into one array, about half the cost of a parse per record; by the handler's own decoder
    when it has one and takes the batch, else by the contract model. (None, None) when the batch
    mixes topics or any record does not parse: then each record goes its own way (and a bad one to
    the DLQ) as before.

    The second part is the batch for its handler as parsed (``_straight``), when the type is one
    a batch handler takes and deduplicates itself, not a command: nothing to claim in the inbox,
    no command to check, nothing to pick out. A batch the handler's decoder read always goes so."""
    if len(records) < 2:
        return None, None
    topic = BY_NAME.get(records[0].topic)
    if topic is None or len(topic.messages) != 1:
        return None, None
    values = [r.value for r in records if r.topic == topic.name and r.value]
    # Each value one object: no string can run across the separator (JSON strings hold no raw
    # newline), and a record cut in two or holding two objects fails the shape or the count.
    if len(values) != len(records) or not all(v[:1] == b"{" and v[-1:] == b"}" for v in values):
        return None, None
    model = topic.messages[0]
    kind = model.model_fields["type"].default
    data = b"[" + b"\n,".join(values) + b"]"
    own = registry.decoders.get(kind)
    if own is not None:
        try:
            parsed = own(data)
        except ValueError:  # outside what it takes: the contract model decides
            pass
        else:
            if len(parsed) == len(records):
                return parsed, _straight(parsed, values)
    decode = _LIST_OF.get(model)
    if decode is None:
        decode = _LIST_OF[model] = list_decoder(model)
    try:
        whole = decode(data)
    except ValidationError:
        return None, None
    if len(whole) != len(records):
        return None, None
    straight = kind in registry.batch and kind in registry.deduplicated_by_handler and not issubclass(model, Command)
    return whole, _straight(whole, values) if straight else None


def _straight(messages: list[Any], values: list[bytes]) -> Straight:
    """The batch for its handler: each message with its JSON as received (for
    ``Unit.payload_of``); a message id that comes again in the batch (a redelivery) keeps its
    first copy, as the general path does, and the others count as duplicates."""
    ids = [message.message_id for message in messages]
    received: dict[uuid.UUID, bytes | None] = dict(zip(ids, values, strict=True))
    if len(received) == len(messages):
        return messages, received, 0
    first: list[Any] = []
    received = {}
    for message_id, message, value in zip(ids, messages, values, strict=True):
        if message_id not in received:
            received[message_id] = value
            first.append(message)
    return first, received, len(messages) - len(first)


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
    return {message_id for (message_id,) in rows}
