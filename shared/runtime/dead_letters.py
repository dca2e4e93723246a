"""A service's dead letters: recorded by the batch processor (each once, and sent to its topic's
``.dlq``), and as operators see them (``billing dlq``): list, show, and re-drive.

Every service keeps its own ``dead_letters`` table (see ``tables.py``); the operators' side works
on the engine of the service it is given, so the ``billing`` command asks each service for its
own. A re-drive is recorded in ``dead_letter_replays`` in the same transaction that holds the
dead letter's row lock while the record is published: two operators cannot re-drive one dead
letter at once, and a re-drive that was not published is not recorded.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
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
        unit.outcomes[(record.topic, "dead_lettered" if inserted is not None else "duplicate")] += 1
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
    replays: int = 0
    redrive_of: int | None = None  # the dead letter (same service) whose re-drive this one came of

    @property
    def ref(self) -> str:
        """How an operator names it across services: ``<service>-<id>``, e.g. ``usage_metering-7``."""
        return f"{self.service}-{self.id}"


@dataclass(frozen=True)
class Replay:
    dead_letter: str
    replayed_at: datetime
    replayed_by: str
    amended: bool
    to_partition: int
    to_offset: int


class AlreadyRedriven(Exception):
    """The dead letter was re-driven before (``again`` not given)."""

    def __init__(self, last: Replay) -> None:
        super().__init__(f"re-driven before, at {last.replayed_at.isoformat(timespec='seconds')} by {last.replayed_by}")
        self.last = last


# Where a dead letter came from when it is itself a re-driven record that failed again: the
# re-drive whose record landed at this dead letter's topic, partition and offset.
_COLUMNS = (
    'd.id, d.topic, d."partition", d."offset", d.error, d.failed_at, d.payload, '
    "(select count(*) from dead_letter_replays r where r.dead_letter_id = d.id), "
    "(select o.id from dead_letter_replays r join dead_letters o on o.id = r.dead_letter_id "
    'where o.topic = d.topic and r.to_partition = d."partition" and r.to_offset = d."offset" limit 1)'
)

Publish = Callable[[DeadLetter, bytes], Awaitable[tuple[int, int]]]


class DeadLetters:
    def __init__(self, service: str, engine: AsyncEngine) -> None:
        self.service = service
        self.engine = engine

    def _letter(self, row: Any) -> DeadLetter:
        return DeadLetter(self.service, *row)

    def _replay(self, letter_id: int, row: Any) -> Replay:
        return Replay(f"{self.service}-{letter_id}", *row)

    async def find(
        self, topic: str | None = None, since: datetime | None = None, limit: int = 100, redriven: bool | None = None
    ) -> list[DeadLetter]:
        """Newest first; only ``topic``'s (the original topic), only those failed at or after
        ``since``, only those re-driven before (``redriven=True``) or never (``False``)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    f"select {_COLUMNS} from dead_letters d where (cast(:t as text) is null or d.topic = :t) "
                    "and (cast(:s as timestamptz) is null or d.failed_at >= :s) and (cast(:r as boolean) is null "
                    "or exists (select from dead_letter_replays r where r.dead_letter_id = d.id) = :r) "
                    "order by d.id desc limit :n"
                ),
                {"t": topic, "s": since, "n": limit, "r": redriven},
            )
            return [self._letter(r) for r in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.text(f"select {_COLUMNS} from dead_letters d where d.id = :i"), {"i": letter_id})
            ).first()
        return None if row is None else self._letter(row)

    async def replays(self, letter_id: int) -> list[Replay]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "select replayed_at, replayed_by, amended, to_partition, to_offset from dead_letter_replays "
                    "where dead_letter_id = :i order by id"
                ),
                {"i": letter_id},
            )
            return [self._replay(letter_id, r) for r in rows]

    async def redrive(
        self, letter_id: int, by: str, publish: Publish, value: bytes | None = None, again: bool = False
    ) -> Replay | None:
        """Publish the dead letter's value (or ``value``, fixed by hand) to its topic with
        ``publish`` and record that; None when there is no such dead letter. Raises
        ``AlreadyRedriven`` when it was re-driven before and ``again`` is not given."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.text(f"select {_COLUMNS} from dead_letters d where d.id = :i for update of d"), {"i": letter_id}
                )
            ).first()
            if row is None:
                return None
            letter = self._letter(row)
            if letter.replays and not again:
                last = (
                    await conn.execute(
                        sa.text(
                            "select replayed_at, replayed_by, amended, to_partition, to_offset "
                            "from dead_letter_replays where dead_letter_id = :i order by id desc limit 1"
                        ),
                        {"i": letter_id},
                    )
                ).one()
                raise AlreadyRedriven(self._replay(letter_id, last))
            partition, offset = await publish(letter, letter.payload if value is None else value)
            recorded = (
                await conn.execute(
                    sa.text(
                        "insert into dead_letter_replays (dead_letter_id, replayed_by, amended, to_partition, to_offset) "
                        "values (:i, :b, :a, :p, :o) "
                        "returning replayed_at, replayed_by, amended, to_partition, to_offset"
                    ),
                    {"i": letter_id, "b": by, "a": value is not None, "p": partition, "o": offset},
                )
            ).one()
        return self._replay(letter_id, recorded)
