"""Usage metering's own tables and set-based queries (one statement per batch, not per call)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.usage_metering.domain import THRESHOLDS, Meter
from shared.cycles import Cycle

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("billing_day", sa.SmallInteger, nullable=False),
    sa.Column("cap", sa.Numeric(14, 2), nullable=False),
    sa.Column("open_cycle_start", sa.Date, nullable=False),
    sa.Column("open_cycle_end", sa.Date, nullable=False),
)
meters = sa.Table(
    "meters",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("cycle_start", sa.Date, primary_key=True),
    sa.Column("cycle_end", sa.Date, nullable=False),
    sa.Column("cap", sa.Numeric(14, 2), nullable=False),
    sa.Column("billable", sa.Numeric(20, 6), nullable=False),
    sa.Column("over_cap", sa.Numeric(20, 6), nullable=False),
    sa.Column("alerted", sa.SmallInteger, nullable=False, comment="bit per threshold: 1=50%, 2=80%, 4=100%"),
    sa.Column("blocked", sa.Boolean, nullable=False),
    sa.Column("late_unbilled", sa.Numeric(20, 6), nullable=False),
    sa.CheckConstraint("billable >= 0 and over_cap >= 0 and late_unbilled >= 0", name="meter_amounts"),
)
calls = sa.Table(
    "calls",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("call_id", sa.Text, primary_key=True),
    sa.Column("cost", sa.Numeric(20, 6), nullable=False),
    sa.Column("cycle_start", sa.Date, nullable=False),
)
seals = sa.Table(
    "seals",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("cycle_start", sa.Date, primary_key=True),
    sa.Column("event", sa.LargeBinary, nullable=False),
)

BITS = {percent: 1 << i for i, percent in enumerate(THRESHOLDS)}


def _to_bits(alerted: frozenset[int]) -> int:
    return sum(BITS[p] for p in alerted)


def _from_bits(bits: int) -> frozenset[int]:
    return frozenset(p for p, bit in BITS.items() if bits & bit)


@dataclass(frozen=True)
class Account:
    account_id: str
    billing_day: int
    cap: Decimal
    open_cycle: Cycle


MeterKey = tuple[str, date]


# Calls share this lock, one statement per batch; cap changes and seals take it alone. So a batch of
# calls never works from an open cycle or cap that a concurrent seal or cap change is changing
# (far cheaper than a row lock on every account of a 5,000-call batch).
METERING_LOCK = 7240002


class MeterStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def share_metering(self) -> None:
        await self.session.execute(sa.text("select pg_advisory_xact_lock_shared(:k)"), {"k": METERING_LOCK})

    async def own_metering(self) -> None:
        await self.session.execute(sa.text("select pg_advisory_xact_lock(:k)"), {"k": METERING_LOCK})

    async def ensure_meters(self, wanted: dict[tuple[str, Cycle], Decimal]) -> None:
        """Create missing meters (at the account's cap) so that ``meters`` can lock every one: two
        transactions never both start a meter from zero."""
        if not wanted:
            return
        keys = sorted(wanted, key=lambda k: (k[0], k[1].start))
        await self.session.execute(
            sa.text(
                "insert into meters (account_id, cycle_start, cycle_end, cap, billable, over_cap, alerted, blocked, "
                "late_unbilled) select a, s, e, c, 0, 0, 0, false, 0 from unnest(cast(:a as text[]), "
                "cast(:s as date[]), cast(:e as date[]), cast(:c as numeric[])) as k(a, s, e, c) "
                "on conflict do nothing"
            ),
            {
                "a": [a for a, _ in keys],
                "s": [c.start for _, c in keys],
                "e": [c.end for _, c in keys],
                "c": [wanted[k] for k in keys],
            },
        )

    async def open_account(self, account_id: str, billing_day: int, cap: Decimal, first: Cycle) -> None:
        await self.session.execute(
            sa.text(
                "insert into accounts values (:a, :d, :c, :s, :e) on conflict do nothing",
            ),
            {"a": account_id, "d": billing_day, "c": cap, "s": first.start, "e": first.end},
        )

    async def accounts(self, account_ids: Iterable[str], lock: bool = False) -> dict[str, Account]:
        """The accounts (``lock``: for update, in id order)."""
        rows = await self.session.execute(
            sa.text(
                "select account_id, billing_day, cap, open_cycle_start, open_cycle_end from accounts "
                "where account_id = any(:ids) order by account_id" + (" for update" if lock else "")
            ),
            {"ids": list(account_ids)},
        )
        return {r[0]: Account(r[0], r[1], r[2], Cycle(r[3], r[4])) for r in rows}

    async def set_cap(self, account_id: str, cap: Decimal) -> None:
        await self.session.execute(
            sa.text("update accounts set cap = :c where account_id = :a"), {"a": account_id, "c": cap}
        )

    async def claim_calls(self, rows: list[tuple[str, str, Decimal, date]]) -> set[tuple[str, str]]:
        """Record calls by (account, call id); return the ones never seen before."""
        if not rows:
            return set()
        account_ids, call_ids, costs, cycles = (list(column) for column in zip(*rows, strict=True))
        result = await self.session.execute(
            sa.text(
                "insert into calls (account_id, call_id, cost, cycle_start) "
                "select * from unnest(cast(:a as text[]), cast(:c as text[]), cast(:k as numeric[]), "
                "cast(:s as date[])) on conflict do nothing returning account_id, call_id"
            ),
            {"a": account_ids, "c": call_ids, "k": costs, "s": cycles},
        )
        return {(r[0], r[1]) for r in result}

    async def meters(self, keys: Iterable[MeterKey]) -> dict[MeterKey, Meter]:
        """The meters for these (account, cycle start) pairs, locked for this transaction."""
        keys = sorted(set(keys))
        if not keys:
            return {}
        account_ids, starts = (list(c) for c in zip(*keys, strict=True))
        rows = await self.session.execute(
            sa.text(
                "select m.account_id, m.cycle_start, m.cap, m.billable, m.over_cap, m.alerted, m.blocked, "
                "m.late_unbilled from meters m join unnest(cast(:a as text[]), cast(:s as date[])) k(a, s) "
                "on m.account_id = k.a and m.cycle_start = k.s order by 1, 2 for update of m"
            ),
            {"a": account_ids, "s": starts},
        )
        return {(r[0], r[1]): Meter(r[2], r[3], r[4], _from_bits(r[5]), r[6], r[7]) for r in rows}

    async def save_meters(self, changed: dict[tuple[str, Cycle], Meter]) -> None:
        if not changed:
            return
        rows = [
            (a, c.start, c.end, m.cap, m.billable, m.over_cap, _to_bits(m.alerted), m.blocked, m.late_unbilled)
            for (a, c), m in changed.items()
        ]
        columns = list(zip(*rows, strict=True))
        await self.session.execute(
            sa.text(
                "insert into meters (account_id, cycle_start, cycle_end, cap, billable, over_cap, alerted, blocked, "
                "late_unbilled) select * from unnest(cast(:a as text[]), cast(:s as date[]), cast(:e as date[]), "
                "cast(:cap as numeric[]), cast(:b as numeric[]), cast(:o as numeric[]), cast(:al as smallint[]), "
                "cast(:bl as boolean[]), cast(:l as numeric[])) on conflict (account_id, cycle_start) do update set "
                "cap = excluded.cap, billable = excluded.billable, over_cap = excluded.over_cap, "
                "alerted = excluded.alerted, blocked = excluded.blocked, late_unbilled = excluded.late_unbilled"
            ),
            dict(zip(["a", "s", "e", "cap", "b", "o", "al", "bl", "l"], [list(c) for c in columns], strict=True)),
        )

    # ------------------------------------------------------------------ set-based, for sealing many accounts at once
    async def seals(self, pairs: list[tuple[str, date]]) -> dict[tuple[str, date], bytes]:
        rows = await self.session.execute(
            sa.text(
                "select s.account_id, s.cycle_start, s.event from seals s join unnest(cast(:a as text[]), "
                "cast(:s as date[])) as k(a, s) on s.account_id = k.a and s.cycle_start = k.s"
            ),
            {"a": [a for a, _ in pairs], "s": [d for _, d in pairs]},
        )
        return {(r[0], r[1]): r[2] for r in rows}

    async def late_meters_many(self, before: list[tuple[str, date]]) -> dict[str, list[tuple[Cycle, Meter]]]:
        """Per account: sealed cycles (before the given start) with late usage not yet billed, locked."""
        rows = await self.session.execute(
            sa.text(
                "select m.account_id, m.cycle_start, m.cycle_end, m.cap, m.billable, m.over_cap, m.alerted, "
                "m.blocked, m.late_unbilled from meters m join unnest(cast(:a as text[]), cast(:s as date[])) "
                "as k(a, s) on m.account_id = k.a and m.cycle_start < k.s and m.late_unbilled > 0 "
                "order by 1, 2 for update of m"
            ),
            {"a": [a for a, _ in before], "s": [d for _, d in before]},
        )
        found: dict[str, list[tuple[Cycle, Meter]]] = {}
        for r in rows:
            found.setdefault(r[0], []).append(
                (Cycle(r[1], r[2]), Meter(r[3], r[4], r[5], _from_bits(r[6]), r[7], r[8]))
            )
        return found

    async def move_open_cycles(self, moves: list[tuple[str, Cycle]]) -> None:
        await self.session.execute(
            sa.text(
                "update accounts a set open_cycle_start = k.s, open_cycle_end = k.e from unnest(cast(:a as text[]), "
                "cast(:s as date[]), cast(:e as date[])) as k(a, s, e) where a.account_id = k.a"
            ),
            {"a": [a for a, _ in moves], "s": [c.start for _, c in moves], "e": [c.end for _, c in moves]},
        )

    async def record_seals(self, seals: list[tuple[str, date, bytes]]) -> None:
        if seals:
            await self.session.execute(
                sa.text(
                    "insert into seals select * from unnest(cast(:a as text[]), cast(:s as date[]), cast(:e as bytea[]))"
                ),
                {"a": [a for a, _, _ in seals], "s": [d for _, d, _ in seals], "e": [e for _, _, e in seals]},
            )
