"""Usage metering's own tables and set-based queries (one statement per batch, not per call)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.usage_metering.domain import THRESHOLDS, Meter
from shared.cycles import Cycle
from shared.db import driver_connection
from shared.runtime import ConcurrentUpdate
from shared.runtime.seals import SealLedger, declare_seals_table
from shared.runtime.tables import declare_runtime_tables

metadata = sa.MetaData()
declare_runtime_tables(metadata)

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
    sa.Column("version", sa.Integer, nullable=False, server_default="0", comment="bumped by every write"),
    sa.CheckConstraint("billable >= 0 and over_cap >= 0 and late_unbilled >= 0", name="meter_amounts"),
    postgresql_with={"fillfactor": 70},  # room on each page for in-place (HOT) updates of hot meters
)
calls = sa.Table(
    "calls",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("call_id", sa.Text, primary_key=True),
    sa.Column("cost", sa.Numeric(20, 6), nullable=False),
    sa.Column("cycle_start", sa.Date, nullable=False),
)
seals = declare_seals_table(metadata)

BITS = {percent: 1 << i for i, percent in enumerate(THRESHOLDS)}


def _to_bits(alerted: frozenset[int]) -> int:
    return sum(BITS[p] for p in alerted)


_FROM_BITS = {bits: frozenset(p for p, bit in BITS.items() if bits & bit) for bits in range(1 << len(THRESHOLDS))}


def _from_bits(bits: int) -> frozenset[int]:
    return _FROM_BITS[bits]


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


# $1: the account ids (text[]).
ACCOUNTS_BY_ID = (
    "select account_id, billing_day, cap, open_cycle_start, open_cycle_end from accounts "
    "where account_id = any($1::text[]) order by account_id"
)
# A batch's meters, read and written by primary key whatever the batch's size: joined with keys
# unpacked from JSON, the planner guesses 100 keys and hashes the whole table of up to some 15,000
# meters, while a lookup per key is as fast as the hash even for 4,000 keys (docs/architecture.md, Decisions).
# $1: a JSON array of [account id, cycle start]. ``offset 0`` keeps the lateral subquery a lookup
# per key (without it the planner folds it into a join and may hash again).
METERS_BY_KEY = (
    "select m.account_id, m.cycle_start, m.cap, m.billable, m.over_cap, m.alerted, m.blocked, m.late_unbilled, "
    "m.version from jsonb_array_elements($1::jsonb) k cross join lateral (select * from meters m "
    "where m.account_id = k->>0 and m.cycle_start = (k->>1)::date offset 0) m"
)
# $1: a JSON array of [account id, cycle start, cycle end, cap, billable, over cap, alert bits,
# blocked, late unbilled, new version]; the new version is the one read plus one, 0 for a meter
# that was not there. An insert probes the primary key for each row (no join to plan); a meter
# that is there is overwritten only if it is still at the version read (one below the new one),
# so a meter changed or created meanwhile is left alone and missing from the count.
SAVE_METERS_IF_UNCHANGED = (
    "insert into meters as m (account_id, cycle_start, cycle_end, cap, billable, over_cap, alerted, blocked, "
    "late_unbilled, version) select r->>0, (r->>1)::date, (r->>2)::date, (r->>3)::numeric, (r->>4)::numeric, "
    "(r->>5)::numeric, (r->>6)::smallint, (r->>7)::boolean, (r->>8)::numeric, (r->>9)::integer "
    "from jsonb_array_elements($1::jsonb) r on conflict (account_id, cycle_start) do update set "
    "cap = excluded.cap, billable = excluded.billable, over_cap = excluded.over_cap, alerted = excluded.alerted, "
    "blocked = excluded.blocked, late_unbilled = excluded.late_unbilled, version = excluded.version "
    "where m.version = excluded.version - 1"
)
# $1: a JSON array of [account id, call id, cost, cycle start]; returns the indexes of those recorded before.
CLAIM_CALLS = (
    "with given as (select r->>0 as a, r->>1 as c, (r->>2)::numeric as k, (r->>3)::date as s, i - 1 as i "
    "from jsonb_array_elements($1::jsonb) with ordinality as t(r, i)), "
    "fresh as (insert into calls (account_id, call_id, cost, cycle_start) select a, c, k, s from given "
    "on conflict do nothing returning account_id, call_id) "
    "select i from given where not exists (select from fresh where account_id = a and call_id = c)"
)


CALLS_COLUMNS = ("account_id", "call_id", "cost", "cycle_start")
# Before each COPY of a batch's new calls: a COPY that hits the calls key (a repeat older than
# RecentCalls, or a replay) is rolled back to here alone, and the batch's calls claimed again.
BEFORE_CALLS_COPY = "savepoint before_calls_copy"
UNDO_CALLS_COPY = "rollback to savepoint before_calls_copy"

CallKey = tuple[str, str]  # account id, call id


class RecentCalls:
    """The (account, call id) pairs this process committed to ``calls`` lately, at most ``capacity``
    (the oldest forgotten first): a repeat report among them is dropped before the write, so a
    batch's new calls can go in by binary COPY. Only committed pairs enter (``after_commit``), so
    every pair here is charged for good whoever owns its partition now; a repeat of a pair not here
    (forgotten, or committed by another replica) makes the COPY hit the calls key, the authority."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._known: set[CallKey] = set()
        self._order: deque[CallKey] = deque()

    def __contains__(self, key: CallKey) -> bool:
        return key in self._known

    def __len__(self) -> int:
        return len(self._known)

    def add(self, keys: Iterable[CallKey]) -> None:
        for key in keys:
            if key not in self._known:
                self._known.add(key)
                self._order.append(key)
        while len(self._order) > self.capacity:
            self._known.discard(self._order.popleft())

    def remember_when_committed(self, session: AsyncSession, keys: list[CallKey]) -> None:
        if self.capacity and keys:
            sa.event.listen(session.sync_session, "after_commit", lambda _: self.add(keys), once=True)


def _json(rows: list[Any]) -> str:
    """Many rows as one JSON parameter: far cheaper to send than arrays of Decimals and dates
    (callers pass strings for those: ``str`` on each is cheaper than a ``default`` callback)."""
    return json.dumps(rows, separators=(",", ":"))


def _expect_all(status: str, rows: int) -> None:
    """``UPDATE n`` / ``INSERT 0 n``: fewer than asked means another transaction got there first."""
    written = int(status.rsplit(" ", 1)[1])
    if written != rows:
        raise ConcurrentUpdate(f"{rows - written} of {rows} meters changed while this batch ran")


# The store's other statements, with named parameters, run through the session (cap changes,
# seals, accounts opening: one account or one seal batch at a time, not the calls path).
OPEN_ACCOUNT = (
    "insert into accounts (account_id, billing_day, cap, open_cycle_start, open_cycle_end) "
    "values (:account_id, :billing_day, :cap, :open_cycle_start, :open_cycle_end) on conflict do nothing"
)
SET_CAP = "update accounts set cap = :cap where account_id = :account_id"
METER_KEYS = "unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[])) as wanted(account_id, cycle_start)"
LOCKED_METERS = (
    "select m.account_id, m.cycle_start, m.cap, m.billable, m.over_cap, m.alerted, m.blocked, m.late_unbilled "
    f"from meters m join {METER_KEYS} on m.account_id = wanted.account_id and m.cycle_start = wanted.cycle_start "
    "order by 1, 2 for update of m"
)
SAVE_METERS = (
    "insert into meters (account_id, cycle_start, cycle_end, cap, billable, over_cap, alerted, blocked, "
    "late_unbilled) select * from unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[]), "
    "cast(:cycle_ends as date[]), cast(:caps as numeric[]), cast(:billable as numeric[]), "
    "cast(:over_cap as numeric[]), cast(:alerted as smallint[]), cast(:blocked as boolean[]), "
    "cast(:late_unbilled as numeric[])) on conflict (account_id, cycle_start) do update set "
    "cap = excluded.cap, billable = excluded.billable, over_cap = excluded.over_cap, "
    "alerted = excluded.alerted, blocked = excluded.blocked, late_unbilled = excluded.late_unbilled, "
    "version = meters.version + 1"
)
LATE_METERS = (
    "select m.account_id, m.cycle_start, m.cycle_end, m.cap, m.billable, m.over_cap, m.alerted, m.blocked, "
    f"m.late_unbilled from meters m join {METER_KEYS} on m.account_id = wanted.account_id "
    "and m.cycle_start < wanted.cycle_start and m.late_unbilled > 0 order by 1, 2 for update of m"
)
MOVE_OPEN_CYCLES = (
    "update accounts a set open_cycle_start = moved.open_cycle_start, open_cycle_end = moved.open_cycle_end "
    "from unnest(cast(:account_ids as text[]), cast(:open_cycle_starts as date[]), "
    "cast(:open_cycle_ends as date[])) as moved(account_id, open_cycle_start, open_cycle_end) "
    "where a.account_id = moved.account_id"
)


def _meter(row: Any) -> Meter:
    return Meter(row.cap, row.billable, row.over_cap, _from_bits(row.alerted), row.blocked, row.late_unbilled)


class MeterStore:
    def __init__(self, session: AsyncSession, recent_calls: RecentCalls | None = None) -> None:
        self.session = session
        self.seals = SealLedger(session)
        self.recent_calls = recent_calls if recent_calls is not None else RecentCalls(0)

    async def _driver(self) -> Any:
        """The asyncpg connection under this session's transaction. The calls path uses it
        directly: SQLAlchemy's per-row and per-parameter work costs microseconds a row."""
        return await driver_connection(self.session)

    async def share_metering(self) -> None:
        # On the driver, without parameters: a simple query, no statement to prepare or bind.
        await (await self._driver()).execute(f"select pg_advisory_xact_lock_shared({METERING_LOCK})")

    async def own_metering(self) -> None:
        await (await self._driver()).execute(f"select pg_advisory_xact_lock({METERING_LOCK})")

    async def open_account(self, account_id: str, billing_day: int, cap: Decimal, first: Cycle) -> None:
        await self.session.execute(
            sa.text(OPEN_ACCOUNT),
            {
                "account_id": account_id,
                "billing_day": billing_day,
                "cap": cap,
                "open_cycle_start": first.start,
                "open_cycle_end": first.end,
            },
        )

    async def accounts(self, account_ids: Iterable[str], lock: bool = False) -> dict[str, Account]:
        """The accounts (``lock``: for update, in id order).

        ``= any(array)``, not a join with the ids unpacked from JSON: for such a join the planner
        guesses 100 ids and hashes the whole table for every batch, however small; with an array
        it looks up each id in the primary key (docs/architecture.md, Decisions)."""
        rows = await (await self._driver()).fetch(ACCOUNTS_BY_ID + (" for update" if lock else ""), list(account_ids))
        return {
            account_id: Account(account_id, billing_day, cap, Cycle(open_cycle_start, open_cycle_end))
            for account_id, billing_day, cap, open_cycle_start, open_cycle_end in rows
        }

    async def set_cap(self, account_id: str, cap: Decimal) -> None:
        await self.session.execute(sa.text(SET_CAP), {"account_id": account_id, "cap": cap})

    async def claim_calls(self, rows: list[tuple[str, str, Decimal, date]]) -> list[int]:
        """Record calls by (account, call id), each pair at most once in ``rows``; return the
        indexes of the rows already recorded before (a repeat report: no second charge).

        Pairs this process committed lately are repeats without a look at the table; the others
        go in by binary COPY, about twice the rate of the deduplicating insert and half its
        PostgreSQL CPU (docs/architecture.md, Decisions). When the COPY hits the calls key, it is
        undone and those rows claimed with the deduplicating insert instead."""
        repeats: list[int] = []
        fresh: list[int] = []
        for index, (account_id, call_id, _, _) in enumerate(rows):
            (repeats if (account_id, call_id) in self.recent_calls else fresh).append(index)
        if not fresh:
            return repeats
        conn = await self._driver()
        await conn.execute(BEFORE_CALLS_COPY)
        try:
            await conn.copy_records_to_table(calls.name, records=[rows[i] for i in fresh], columns=CALLS_COLUMNS)
        except asyncpg.UniqueViolationError:
            await conn.execute(UNDO_CALLS_COPY)
            claimed = await conn.fetch(
                CLAIM_CALLS, _json([(a, c, str(k), str(s)) for a, c, k, s in map(rows.__getitem__, fresh)])
            )
            old = {fresh[r[0]] for r in claimed}
            repeats = sorted(repeats + list(old))
            fresh = [i for i in fresh if i not in old]
        self.recent_calls.remember_when_committed(self.session, [(rows[i][0], rows[i][1]) for i in fresh])
        return repeats

    async def versioned_meters(self, keys: Iterable[MeterKey]) -> dict[MeterKey, tuple[Meter, int]]:
        """The meters for these (account, cycle start) pairs with their version, not locked:
        ``save_meters_if_unchanged`` refuses to write over a meter changed since."""
        rows = await (await self._driver()).fetch(METERS_BY_KEY, _json([(a, str(start)) for a, start in keys]))
        return {
            (account_id, cycle_start): (Meter(cap, billable, over_cap, _from_bits(alerted), blocked, late), version)
            for account_id, cycle_start, cap, billable, over_cap, alerted, blocked, late, version in rows
        }

    async def save_meters_if_unchanged(self, changed: dict[tuple[str, Cycle], tuple[Meter, int | None]]) -> None:
        """Write meters read at the given versions (None: there was none); raise ``ConcurrentUpdate``
        when any changed (or appeared) in between, so the batch is retried from the start."""
        if not changed:
            return
        rows = [
            (
                account_id,
                str(cycle.start),
                str(cycle.end),
                str(meter.cap),
                str(meter.billable),
                str(meter.over_cap),
                _to_bits(meter.alerted),
                meter.blocked,
                str(meter.late_unbilled),
                0 if version is None else version + 1,
            )
            for (account_id, cycle), (meter, version) in changed.items()
        ]
        status = await (await self._driver()).execute(SAVE_METERS_IF_UNCHANGED, _json(rows))
        _expect_all(status, len(rows))

    async def meters(self, keys: Iterable[MeterKey]) -> dict[MeterKey, Meter]:
        """The meters for these (account, cycle start) pairs, locked for this transaction."""
        keys = sorted(set(keys))
        if not keys:
            return {}
        rows = await self.session.execute(
            sa.text(LOCKED_METERS),
            {"account_ids": [account for account, _ in keys], "cycle_starts": [start for _, start in keys]},
        )
        return {(row.account_id, row.cycle_start): _meter(row) for row in rows}

    async def save_meters(self, changed: dict[tuple[str, Cycle], Meter]) -> None:
        if not changed:
            return
        meters = changed.values()
        await self.session.execute(
            sa.text(SAVE_METERS),
            {
                "account_ids": [account for account, _ in changed],
                "cycle_starts": [cycle.start for _, cycle in changed],
                "cycle_ends": [cycle.end for _, cycle in changed],
                "caps": [meter.cap for meter in meters],
                "billable": [meter.billable for meter in meters],
                "over_cap": [meter.over_cap for meter in meters],
                "alerted": [_to_bits(meter.alerted) for meter in meters],
                "blocked": [meter.blocked for meter in meters],
                "late_unbilled": [meter.late_unbilled for meter in meters],
            },
        )

    # ------------------------------------------------------------------ set-based, for sealing many accounts at once
    async def late_meters_many(self, before: list[tuple[str, date]]) -> dict[str, list[tuple[Cycle, Meter]]]:
        """Per account: sealed cycles (before the given start) with late usage not yet billed, locked."""
        rows = await self.session.execute(
            sa.text(LATE_METERS),
            {"account_ids": [account for account, _ in before], "cycle_starts": [start for _, start in before]},
        )
        found: dict[str, list[tuple[Cycle, Meter]]] = {}
        for row in rows:
            found.setdefault(row.account_id, []).append((Cycle(row.cycle_start, row.cycle_end), _meter(row)))
        return found

    async def move_open_cycles(self, moves: list[tuple[str, Cycle]]) -> None:
        await self.session.execute(
            sa.text(MOVE_OPEN_CYCLES),
            {
                "account_ids": [account for account, _ in moves],
                "open_cycle_starts": [cycle.start for _, cycle in moves],
                "open_cycle_ends": [cycle.end for _, cycle in moves],
            },
        )
