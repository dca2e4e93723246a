"""What the alert board tells operators about its own data: for its page and JSON API, the
accounts blocked or near their cap, the latest alerts, one account's history; for ``billing dlq``,
its dead letters (``connect()``). Read from its database only, with its own settings."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alert_board.domain import NEAR_CAP_PERCENT, Standing
from services.alert_board.settings import Settings
from services.alert_board.storage import ALERT_COLUMNS, STANDING_COLUMNS, standing_of
from shared.db import make_engine
from shared.runtime.dead_letters import DeadLetters


class BoardQueries:
    """The page's side: read-only queries on a pool of its own."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dead_letters = DeadLetters("alert_board", engine)

    async def _all(self, query: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as connection:
            return list((await connection.execute(sa.text(query), params)).all())

    async def blocked(self, limit: int = 500) -> list[Standing]:
        rows = await self._all(
            f"select {STANDING_COLUMNS} from standings where blocked order by blocked_since desc, account_id limit :n",
            n=limit,
        )
        return [standing_of(r) for r in rows]

    async def near_cap(self, limit: int = 500) -> list[Standing]:
        rows = await self._all(
            f"select {STANDING_COLUMNS} from standings where not blocked and threshold_percent >= :p "
            "order by threshold_percent desc, since desc, account_id limit :n",
            p=NEAR_CAP_PERCENT,
            n=limit,
        )
        return [standing_of(r) for r in rows]

    async def standing(self, account_id: str) -> Standing | None:
        rows = await self._all(f"select {STANDING_COLUMNS} from standings where account_id = :a", a=account_id)
        return standing_of(rows[0]) if rows else None

    async def feed(self, before: int | None = None, limit: int = 50) -> list[Any]:
        """The latest alerts, newest first (``before``: older than that id)."""
        return await self._all(
            f"select {ALERT_COLUMNS} from alerts where id < :before order by id desc limit :n",
            before=before if before is not None else 2**62,
            n=limit,
        )

    async def alerts_after(self, after: int, limit: int = 500) -> list[Any]:
        """Alerts recorded after id ``after``, oldest first (what a live feed has not seen)."""
        return await self._all(
            f"select {ALERT_COLUMNS} from alerts where id > :after order by id limit :n", after=after, n=limit
        )

    async def standings(self, account_ids: list[str]) -> dict[str, Standing]:
        rows = await self._all(
            f"select {STANDING_COLUMNS} from standings where account_id = any(:ids)", ids=sorted(set(account_ids))
        )
        return {r.account_id: standing_of(r) for r in rows}

    async def latest_id(self) -> int:
        rows = await self._all("select coalesce(max(id), 0) as id from alerts")
        return int(rows[0].id)

    async def history(self, account_id: str, limit: int = 1000) -> list[Any]:
        """One account's alerts, newest first, every cycle."""
        return await self._all(
            f"select {ALERT_COLUMNS} from alerts where account_id = :a order by occurred_at desc, id desc limit :n",
            a=account_id,
            n=limit,
        )

    async def search(self, text: str, limit: int = 20) -> list[str]:
        """Account ids containing ``text`` (the board's accounts: those that ever alerted)."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = await self._all(
            "select account_id from standings where account_id ilike :p order by account_id limit :n",
            p=pattern,
            n=limit,
        )
        return [r.account_id for r in rows]

    async def close(self) -> None:
        await self.engine.dispose()


def connect(settings: Settings | None = None) -> BoardQueries:
    """The board's queries on a small pool of their own (the operators' command)."""
    return BoardQueries(make_engine((settings or Settings()).database_url, pool_size=2))
