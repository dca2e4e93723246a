"""A service's dead letters as operators see them (``billing dlq``): list, show, and re-drive.

Every service keeps its own ``dead_letters`` table (see ``tables.py``); this module reads it on
the engine of the service it is given, so the ``billing`` command asks each service for its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine


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
