"""The board's tables: every alert received (``alerts``) and each account's standing (``standings``).

Both live in the board's own database, so the page shows the same after a restart; nothing is
kept in memory but the feed's wake-up. Every transaction that records alerts notifies
``ALERTS_CHANNEL`` at commit, which wakes the page's live feed in whichever replica serves it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.alert_board.domain import Alert, Standing
from shared.runtime.tables import declare_runtime_tables

ALERTS_CHANNEL = "board_alerts"

metadata = sa.MetaData()
declare_runtime_tables(metadata)
alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("message_id", sa.Uuid, nullable=False, unique=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column(
        "kind", sa.Text, nullable=False, comment="threshold, blocked, unblocked, cap_changed, cap_change_refused"
    ),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cycle_start", sa.Date, nullable=True, comment="none for a refused cap change"),
    sa.Column("accrued", sa.Numeric(20, 6), nullable=True),
    sa.Column("cap", sa.Numeric(14, 2), nullable=True),
    sa.Column("threshold_percent", sa.SmallInteger, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Index("alerts_by_account", "account_id", "occurred_at"),
)
standings = sa.Table(
    "standings",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("cycle_start", sa.Date, nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cap", sa.Numeric(14, 2), nullable=True),
    sa.Column("accrued", sa.Numeric(20, 6), nullable=True),
    sa.Column("threshold_percent", sa.SmallInteger, nullable=True),
    sa.Column("blocked", sa.Boolean, nullable=False),
    sa.Column("blocked_since", sa.DateTime(timezone=True), nullable=True),
    sa.Index(
        "standings_on_the_board",
        "threshold_percent",
        postgresql_where=sa.text("blocked or threshold_percent >= 80"),
    ),
)

STANDING_COLUMNS = "account_id, cycle_start, since, updated_at, cap, accrued, threshold_percent, blocked, blocked_since"
ALERT_COLUMNS = "id, message_id, account_id, kind, occurred_at, cycle_start, accrued, cap, threshold_percent, reason"

# The notification carries the alert as the page shows it ("<id> <json>"), so the live feed sends
# it on without reading it back; "standings" says lists changed without an alert (a cycle close).
RECORD_ALERT = (
    "with recorded as (insert into alerts (message_id, account_id, kind, occurred_at, cycle_start, accrued, cap, "
    "threshold_percent, reason) values (:m, :a, :k, :t, :c, :accrued, :cap, :p, :r) "
    "on conflict (message_id) do nothing returning id) "
    f"select pg_notify('{ALERTS_CHANNEL}', id::text || ' ' || :shown) from recorded"
)
STANDINGS_CHANGED = f"select pg_notify('{ALERTS_CHANNEL}', 'standings')"
SAVE_STANDING = (
    f"insert into standings ({STANDING_COLUMNS}) values (:a, :c, :since, :updated, :cap, :accrued, :p, :b, :bs) "
    "on conflict (account_id) do update set cycle_start = excluded.cycle_start, since = excluded.since, "
    "updated_at = excluded.updated_at, cap = excluded.cap, accrued = excluded.accrued, "
    "threshold_percent = excluded.threshold_percent, blocked = excluded.blocked, blocked_since = excluded.blocked_since"
)


def standing_of(row: Any) -> Standing:
    return Standing(
        account_id=row.account_id,
        cycle_start=row.cycle_start,
        since=row.since,
        updated_at=row.updated_at,
        cap=row.cap,
        accrued=row.accrued,
        threshold_percent=row.threshold_percent,
        blocked=row.blocked,
        blocked_since=row.blocked_since,
    )


def _standing_params(s: Standing) -> dict[str, Any]:
    return {
        "a": s.account_id,
        "c": s.cycle_start,
        "since": s.since,
        "updated": s.updated_at,
        "cap": s.cap,
        "accrued": s.accrued,
        "p": s.threshold_percent,
        "b": s.blocked,
        "bs": s.blocked_since,
    }


class BoardStore:
    """The consumer's side: read and write standings, record alerts, in the unit's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def standings(self, account_ids: Iterable[str]) -> dict[str, Standing]:
        """The accounts' standings, locked for this transaction (in id order)."""
        rows = await self.session.execute(
            sa.text(
                f"select {STANDING_COLUMNS} from standings where account_id = any(:ids) order by account_id for update"
            ),
            {"ids": sorted(set(account_ids))},
        )
        return {row.account_id: standing_of(row) for row in rows}

    async def save(self, standings: Iterable[Standing]) -> None:
        params = [_standing_params(s) for s in standings]
        if params:
            await self.session.execute(sa.text(SAVE_STANDING), params)

    async def record(self, message_id: uuid.UUID, alert: Alert, shown: str) -> None:
        """Keep the alert for the feed and the account's history (once per message id); ``shown``
        is the alert as the page shows it, for the live feed's notification."""
        await self.session.execute(
            sa.text(RECORD_ALERT),
            {
                "m": message_id,
                "a": alert.account_id,
                "k": alert.kind,
                "t": alert.occurred_at,
                "c": alert.cycle_start,
                "accrued": alert.accrued,
                "cap": alert.cap,
                "p": alert.threshold_percent,
                "r": alert.reason,
                "shown": shown,
            },
        )

    async def standings_changed(self) -> None:
        await self.session.execute(sa.text(STANDINGS_CHANGED))
