"""A service's dead letters: recorded by the batch processor (each once, and sent to its topic's
``.dlq``), and read as operators see them (``billing dlq``): list, show, and re-drive.

Every service keeps its own ``dead_letters`` table (see ``tables.py``); the reading side works on
the engine of the service it is given, so the ``billing`` command asks each service for its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.topics import dlq_of
from shared.runtime.codec import KafkaRecord, dead_letter_payload
from shared.runtime.unit_of_work import Unit

log = logging.getLogger(__name__)

RECORD_DEAD_LETTER = (
    'insert into dead_letters (topic, partition, "offset", record_timestamp, error, payload) '
    "values (:topic, :partition, :offset, :record_timestamp, :error, :payload) on conflict do nothing returning id"
)


def record_context(record: KafkaRecord) -> dict[str, Any]:
    """Where a record came from, for the logs."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


async def record_dead_letters(unit: Unit, service: str, dead: Sequence[tuple[KafkaRecord, str]]) -> None:
    """Keep each record with its error and send it to its topic's ``.dlq`` with this transaction;
    a redelivered poison message gives one dead letter and one ``.dlq`` record."""
    for record, error in dead:
        log.warning("dead letter", extra=record_context(record) | {"error": error})
        inserted = (
            await unit.session.execute(
                sa.text(RECORD_DEAD_LETTER),
                {
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "record_timestamp": record.timestamp or 0,
                    "error": error,
                    "payload": record.value or b"",
                },
            )
        ).first()
        if inserted is not None:
            key = record.key.decode("utf-8", "replace") if record.key else ""
            payload = dead_letter_payload(record, error, service)
            unit.outbox.append((uuid.uuid4(), dlq_of(record.topic), key, payload))


@dataclass(frozen=True)
class DeadLetter:
    service: str
    id: int
    topic: str
    partition: int
    offset: int
    error: str
    failed_at: datetime
    payload: bytes

    @property
    def ref(self) -> str:
        """How an operator names it across services: ``<service>-<id>``, e.g. ``usage_metering-7``."""
        return f"{self.service}-{self.id}"


_COLUMNS = 'id, topic, "partition", "offset", error, failed_at, payload'


class DeadLetters:
    def __init__(self, service: str, engine: AsyncEngine) -> None:
        self.service = service
        self.engine = engine

    def _letter(self, row: Any) -> DeadLetter:
        return DeadLetter(self.service, *row)

    async def list(self, topic: str | None = None, since: datetime | None = None, limit: int = 100) -> list[DeadLetter]:
        """Newest first; only ``topic``'s (the original topic) and only those failed at or after ``since``."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    f"select {_COLUMNS} from dead_letters where (cast(:t as text) is null or topic = :t) "
                    "and (cast(:s as timestamptz) is null or failed_at >= :s) order by id desc limit :n"
                ),
                {"t": topic, "s": since, "n": limit},
            )
            return [self._letter(r) for r in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.text(f"select {_COLUMNS} from dead_letters where id = :i"), {"i": letter_id})
            ).first()
        return None if row is None else self._letter(row)
