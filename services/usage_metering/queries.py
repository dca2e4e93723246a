"""What usage metering tells operators about its own data, read from this service's database only:
the cap, the accrual and the blocked state of an account's current cycle (``billing account``), and
the calls ledger's months, archived by ``billing calls archive`` (``partitions.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.usage_metering import partitions
from services.usage_metering.settings import Settings
from services.usage_metering.storage import BITS
from shared.db import make_engine
from shared.runtime.dead_letters import DeadLetters


@dataclass(frozen=True)
class AccountUsage:
    account_id: str
    cap: Decimal
    cycle_start: date
    cycle_end: date
    accrued: Decimal
    over_cap: Decimal
    blocked: bool
    thresholds_reached: tuple[int, ...]
    calls: int


@dataclass(frozen=True)
class ArchivedMonth:
    month: date
    partition: str  # the detached table that holds the month's calls, until dumped and dropped
    calls: int
    archived_at: datetime
    archived_by: str


class UsageQueries:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dead_letters = DeadLetters("usage_metering", engine)

    async def account(self, account_id: str) -> AccountUsage | None:
        """The account's calling credits in its open cycle; None when this service does not know it."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "select a.cap, a.open_cycle_start, a.open_cycle_end, coalesce(m.billable, 0), "
                        "coalesce(m.over_cap, 0), coalesce(m.blocked, false), coalesce(m.alerted, 0), "
                        "(select count(*) from calls c where c.account_id = a.account_id "
                        "and c.cycle_start = a.open_cycle_start) "
                        "from accounts a left join meters m on m.account_id = a.account_id "
                        "and m.cycle_start = a.open_cycle_start where a.account_id = :a"
                    ),
                    {"a": account_id},
                )
            ).first()
        if row is None:
            return None
        reached = tuple(percent for percent, bit in BITS.items() if row[6] & bit)
        return AccountUsage(account_id, row[0], row[1], row[2], row[3], row[4], row[5], reached, row[7])

    async def archive_calls(self, before: date, by: str, dry_run: bool = False) -> partitions.Archive:
        """Detach the calls partitions of the months ended on or before ``before`` whose every cycle
        is sealed (``dry_run``: only say which); see ``partitions.archive``."""
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            return await partitions.archive(raw.driver_connection, before, by, dry_run)

    async def archived_calls(self) -> list[ArchivedMonth]:
        """The months archived so far, oldest first."""
        async with self.engine.connect() as conn:
            found = await conn.execute(
                sa.text("select month, partition, calls, archived_at, archived_by from call_archives order by month")
            )
            return [ArchivedMonth(*row) for row in found]

    async def close(self) -> None:
        await self.engine.dispose()


def connect(settings: Settings | None = None) -> UsageQueries:
    return UsageQueries(make_engine((settings or Settings()).database_url, pool_size=2))
