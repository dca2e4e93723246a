"""Usage metering's own tables and set-based queries (one statement per batch, not per call)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.usage_metering.domain import THRESHOLDS, Meter, Micros, in_micros, in_usd
from shared.cycles import Cycle
from shared.db import driver_connection
from shared.runtime.seals import SealLedger, declare_seals_table
from shared.runtime.tables import declare_runtime_tables
from shared.runtime.transient import ConcurrentUpdate

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
    sa.Column(
        "meter_epoch",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="bumped when a cap change or a seal changes the account's meters",
    ),
)
# One row, bumped by a statement trigger on ``accounts`` at every update, delete or truncate
# (migration 0012): a worker keeps the accounts it read as of a version (``AccountCache``).
accounts_version = sa.Table(
    "accounts_version",
    metadata,
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("one", sa.Boolean, primary_key=True, server_default=sa.text("true")),
    sa.CheckConstraint("one", name="accounts_version_one_row"),
    comment="one row: bumped by every update, delete or truncate of accounts",
)
# What a meter held when it was last written back: ``meters`` (a view, migration 0009) adds the
# meter's calls after ``through_seq``, which gives the meter as the fold holds it.
meter_snapshots = sa.Table(
    "meter_snapshots",
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
    sa.Column(
        "through_seq",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="the meter's calls (calls.seq) this snapshot holds: 1 to through_seq",
    ),
    sa.CheckConstraint("billable >= 0 and over_cap >= 0 and late_unbilled >= 0", name="meter_amounts"),
    sa.Index("meter_snapshots_by_cycle", "cycle_start"),  # a month's, for the archive (partitions.py)
    postgresql_with={"fillfactor": 70},  # room on each page for in-place (HOT) updates of the snapshots
)
MICRO_COMMENT = "micro-dollars (1 = 0.000001 USD)"
# The ledger's keys compare byte by byte, cheaper for the index entry every call takes than the
# database's collation (migration 0013); equality is the same.
BYTEWISE = sa.Text(collation="C")
# The calls ledger: each call with what the fold decided for it, so a meter is its snapshot plus its
# calls after it; its amounts in integer micro-dollars (migration 0011: cheaper to COPY than numerics),
# made USD again by the view ``meters``. Partitioned by the month its cycles start in (``partitions.py``): old months
# can be archived. Its key is a meter's calls in order; ``call_ids`` says a call was charged.
calls = sa.Table(
    "calls",
    metadata,
    sa.Column("account_id", BYTEWISE, primary_key=True),
    sa.Column("call_id", sa.Text, nullable=False),
    sa.Column("cost", sa.BigInteger, nullable=False, comment=MICRO_COMMENT),
    sa.Column("cycle_start", sa.Date, primary_key=True),
    sa.Column(
        "seq",
        sa.Integer,
        primary_key=True,
        comment="the call's place in its meter (account, cycle): 1, 2, ...; below 1 before meters in memory",
    ),
    sa.Column("billable", sa.BigInteger, nullable=False, comment=MICRO_COMMENT),
    sa.Column("over_cap", sa.BigInteger, nullable=False, comment=MICRO_COMMENT),
    postgresql_partition_by="RANGE (cycle_start)",  # calls_YYYYMM and calls_default: see partitions.py
)
# Every call ever charged, by (account, call id): what makes a call charged once, ever. Never
# partitioned nor archived (PostgreSQL has no unique index across partitions).
call_ids = sa.Table(
    "call_ids",
    metadata,
    sa.Column("account_id", BYTEWISE, primary_key=True),
    sa.Column("call_id", BYTEWISE, primary_key=True),
    sa.Column(
        "cycle_start", sa.Date, nullable=False, comment="the cycle the call was charged in (where its calls row is)"
    ),
)
# The months whose partition of ``calls`` was detached (``billing calls archive``).
call_archives = sa.Table(
    "call_archives",
    metadata,
    sa.Column(
        "month", sa.Date, primary_key=True, comment="the month (its first day) whose cycles' calls were detached"
    ),
    sa.Column("partition", sa.Text, nullable=False),
    sa.Column("calls", sa.BigInteger, nullable=False),
    sa.Column("archived_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column("archived_by", sa.Text, nullable=False),
)
seals = declare_seals_table(metadata)

BITS = {percent: 1 << i for i, percent in enumerate(THRESHOLDS)}


def _to_bits(alerted: frozenset[int]) -> int:
    return sum(BITS[p] for p in alerted)


_FROM_BITS = {bits: frozenset(p for p, bit in BITS.items() if bits & bit) for bits in range(1 << len(THRESHOLDS))}


def _from_bits(bits: int) -> frozenset[int]:
    return _FROM_BITS[bits]


class Account(NamedTuple):
    """An account as metering knows it. A named tuple, not a frozen dataclass: the calls path makes
    one for every account of a batch, and a tuple is built at about a third of the cost."""

    account_id: str
    billing_day: int
    cap: Decimal
    open_cycle: Cycle
    meter_epoch: int = 0


MeterKey = tuple[str, date]
_CYCLES: dict[tuple[date, date], Cycle] = {}  # the open cycles ``MeterStore.accounts`` has seen (a few a month)


# Calls share this lock, one statement per batch; cap changes and seals take it alone. So a batch of
# calls never works from an open cycle or cap that a concurrent seal or cap change is changing
# (far cheaper than a row lock on every account of a 5,000-call batch).
METERING_LOCK = 7240002


# $1: the account ids (text[]).
ACCOUNTS_BY_ID = (
    "select account_id, billing_day, cap, open_cycle_start, open_cycle_end, meter_epoch from accounts "
    "where account_id = any($1::text[]) order by account_id"
)
# $1: the ids of the accounts a worker does not hold (text[]); those found, each with the version
# (one row of nulls but the version when none is).
ACCOUNTS_AT_VERSION = (
    "select a.account_id, a.billing_day, a.cap, a.open_cycle_start, a.open_cycle_end, a.meter_epoch, v.version "
    "from accounts_version v left join accounts a on a.account_id = any($1::text[])"
)
METER_COLUMNS = (
    "m.account_id, m.cycle_start, m.cycle_end, m.cap, m.billable, m.over_cap, m.alerted, m.blocked, "
    "m.late_unbilled, m.through_seq, m.snapshot_seq"
)
# The meters a batch folds into, as they stand (a snapshot plus its calls after it: the view
# ``meters``), looked up by key whatever the batch's size: joined with keys unpacked from JSON,
# the planner guesses 100 keys and hashes whole tables (docs/architecture.md, Decisions).
# $1: a JSON array of [account id, cycle start]. ``offset 0`` keeps the lateral subquery a lookup
# per key (without it the planner folds it into a join and may hash again).
METERS_BY_KEY = (
    f"select {METER_COLUMNS} from jsonb_array_elements($1::jsonb) k cross join lateral (select * from meters m "
    "where m.account_id = k->>0 and m.cycle_start = (k->>1)::date offset 0) m"
)
SNAPSHOT_COLUMNS = (
    "account_id, cycle_start, cycle_end, cap, billable, over_cap, alerted, blocked, late_unbilled, through_seq"
)
SNAPSHOT_ROWS = (
    "select r->>0, (r->>1)::date, (r->>2)::date, (r->>3)::numeric, (r->>4)::numeric, (r->>5)::numeric, "
    "(r->>6)::smallint, (r->>7)::boolean, (r->>8)::numeric, (r->>9)::integer from jsonb_array_elements($1::jsonb) r"
)
SNAPSHOT_UPDATE = (
    "cap = excluded.cap, billable = excluded.billable, over_cap = excluded.over_cap, alerted = excluded.alerted, "
    "blocked = excluded.blocked, late_unbilled = excluded.late_unbilled, through_seq = excluded.through_seq"
)
# $1: a JSON array of [account id, cycle start, cycle end, cap, billable, over cap, alert bits,
# blocked, late unbilled, through seq]. The first row of a meter, made with its first calls.
CREATE_METERS = (
    f"insert into meter_snapshots ({SNAPSHOT_COLUMNS}) {SNAPSHOT_ROWS} on conflict (account_id, cycle_start) do nothing"
)
# The same rows, written back from memory: a snapshot only ever moves forward in its meter's calls,
# so one from a worker that no longer owns the meter (behind, or level with a cap change's) is
# refused; it returns the keys written.
SAVE_SNAPSHOTS = (
    f"insert into meter_snapshots as s ({SNAPSHOT_COLUMNS}) {SNAPSHOT_ROWS} on conflict (account_id, cycle_start) "
    f"do update set {SNAPSHOT_UPDATE} where s.through_seq < excluded.through_seq returning s.account_id, s.cycle_start"
)
# $1: a JSON array of [account id, call id]; returns those in ``call_ids`` (read only: the key decides).
# A lateral lookup per key with ``limit 1``, so it stays a primary-key probe whatever the count.
RECORDED_CALLS = (
    "select k->>0 as account_id, k->>1 as call_id from jsonb_array_elements($1::jsonb) k cross join lateral "
    "(select from call_ids c where c.account_id = k->>0 and c.call_id = k->>1 limit 1) found"
)
CALLS_COLUMNS = ("account_id", "call_id", "cost", "cycle_start", "seq", "billable", "over_cap")
CALL_IDS_COLUMNS = ("account_id", "call_id", "cycle_start")
# $1: a JSON array of [account id, call id, cycle start]; returns the indexes of those recorded before.
CLAIM_CALL_IDS = (
    "with given as (select r->>0 as a, r->>1 as c, (r->>2)::date as s, i - 1 as i "
    "from jsonb_array_elements($1::jsonb) with ordinality as t(r, i)), "
    "fresh as (insert into call_ids (account_id, call_id, cycle_start) select a, c, s from given "
    "on conflict do nothing returning account_id, call_id) "
    "select i from given where not exists (select from fresh where account_id = a and call_id = c)"
)


CallKey = tuple[str, str]  # account id, call id
Call = tuple[str, str, int, date, int, int, int]  # CALLS_COLUMNS: cost, billable, over_cap in micro-dollars


class RecentCalls:
    """The (account, call id) pairs this process committed to ``calls`` lately: a repeat report
    among them is dropped before the write, so a batch's new calls can go in by binary COPY. Only
    committed pairs enter (``after_commit``), so every pair here is charged for good whoever owns
    its partition now; a repeat of a pair not here (forgotten, or committed by another replica)
    makes the COPY hit the ``call_ids`` key, the authority.

    Two generations of sets: pairs enter the young one; once it holds half of ``capacity``, it
    becomes the old one and the old one is forgotten. So the latest ``capacity / 2`` pairs are
    always held, and at most ``capacity`` plus one batch, at the cost of a set update a batch
    (an ordered record that forgets one pair at a time costs a Python step per pair)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._generation = (capacity + 1) // 2
        self._young: set[CallKey] = set()
        self._old: set[CallKey] = set()
        # A repeat got past this record (its COPY hit the key and the batch was rolled back): the
        # next batches claim their ids with the deduplicating insert, until one finds no repeat.
        self.missed = False

    def __contains__(self, key: CallKey) -> bool:
        return key in self._young or key in self._old

    def __len__(self) -> int:
        return len(self._young) + len(self._old - self._young)

    def add(self, keys: Iterable[CallKey]) -> None:
        if not self.capacity:
            return
        self._young.update(keys)
        if len(self._young) >= self._generation:
            self._old, self._young = self._young, set()


class Tracked(NamedTuple):
    """A meter as the fold holds it: the meter (in micro-dollars), its cycle, how many of its calls it holds
    (``position``: calls 1 to position) and how many the snapshot in the database holds (``saved``;
    -1: the meter has no row yet). A named tuple, for the same reason as ``Account``."""

    meter: Micros
    cycle: Cycle
    position: int
    saved: int


def _accounts_of(rows: Iterable[Any]) -> dict[str, Account]:
    """Accounts from rows that begin with ``ACCOUNTS_BY_ID``'s columns (a row without an account is skipped)."""
    cycles = _CYCLES  # the accounts share a handful of open cycles: one object each, not one per row
    found = {}
    for account_id, billing_day, cap, open_cycle_start, open_cycle_end, epoch, *_ in rows:
        if account_id is None:
            continue
        cycle = cycles.get((open_cycle_start, open_cycle_end))
        if cycle is None:
            cycle = cycles[(open_cycle_start, open_cycle_end)] = Cycle(open_cycle_start, open_cycle_end)
        found[account_id] = Account(account_id, billing_day, cap, cycle, epoch)
    return found


class AccountCache:
    """The accounts this process's batches of calls read, as of a version of the accounts table
    (``accounts_version``, bumped by every change of an account). Filled only when a transaction
    that read them commits; all of it is read again when the version moved. Emptied with the
    meters on a rebalance, so it holds the accounts of the partitions this process owns."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.accounts: dict[str, Account] = {}

    def __len__(self) -> int:
        return len(self.accounts)

    def update(self, version: int, read: dict[str, Account]) -> None:
        if version != self.version:
            self.accounts = {}
            self.version = version
        self.accounts.update(read)

    def clear(self) -> None:
        self.version = None
        self.accounts = {}


class MeterMemory:
    """The meters this process folds, per account, with the ``meter_epoch`` of the account they
    were read at: a cap change or a seal (another transaction, maybe another replica) bumps the
    epoch, and the account's meters are read again. A batch's meters enter only when it commits.
    Emptied when the calls consumer's partitions are revoked or assigned, so each ownership starts
    from the database; ``snapshots.MeterSnapshots`` writes the meters back every so often."""

    def __init__(self, snapshot_batches: int = 0) -> None:
        self._accounts: dict[str, tuple[int, dict[date, Tracked]]] = {}
        self.snapshot_batches = snapshot_batches
        self.batches = 0  # committed since the last snapshot
        self.snapshot_due = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(meters) for _, meters in self._accounts.values())

    def get(self, account_id: str, epoch: int, cycle_start: date) -> Tracked | None:
        held = self._accounts.get(account_id)
        if held is None:
            return None
        if held[0] != epoch:
            del self._accounts[account_id]
            return None
        return held[1].get(cycle_start)

    def apply(self, states: dict[MeterKey, Tracked], epochs: dict[str, int], stale: Iterable[str] = ()) -> None:
        """A committed batch's meters; first, the accounts it found stale are forgotten (it holds
        their meters as they stand now only where it had calls left for them)."""
        self.drop(stale)
        for (account_id, cycle_start), tracked in states.items():
            epoch = epochs[account_id]
            held = self._accounts.get(account_id)
            if held is None or held[0] != epoch:
                held = self._accounts[account_id] = (epoch, {})
            current = held[1].get(cycle_start)
            if current is not None and current.position >= tracked.position:  # folded beside another: unsure
                del self._accounts[account_id]
                continue
            held[1][cycle_start] = tracked
        self.batches += 1
        if self.snapshot_batches and self.batches >= self.snapshot_batches:
            self.snapshot_due.set()

    def drop(self, account_ids: Iterable[str]) -> None:
        for account_id in account_ids:
            self._accounts.pop(account_id, None)

    def clear(self) -> None:
        self._accounts.clear()

    def unsaved(self) -> list[tuple[str, Tracked]]:
        """The meters whose snapshot is behind them; starts counting the batches to the next snapshot."""
        self.batches = 0
        self.snapshot_due.clear()
        return [
            (account_id, tracked)
            for account_id, (_, meters) in self._accounts.items()
            for tracked in meters.values()
            if tracked.position > tracked.saved
        ]

    def saved(self, account_id: str, cycle_start: date, position: int) -> None:
        held = self._accounts.get(account_id)
        if held is None:
            return
        tracked = held[1].get(cycle_start)
        if tracked is not None and tracked.saved < position <= tracked.position:
            held[1][cycle_start] = tracked._replace(saved=position)


def _json(rows: list[Any]) -> str:
    """Many rows as one JSON parameter: far cheaper to send than arrays of Decimals and dates
    (callers pass strings for those: ``str`` on each is cheaper than a ``default`` callback)."""
    return json.dumps(rows, separators=(",", ":"))


def _snapshot_row(account_id: str, cycle: Cycle, meter: Meter, through_seq: int) -> tuple[Any, ...]:
    return (
        account_id,
        str(cycle.start),
        str(cycle.end),
        str(meter.cap),
        str(meter.billable),
        str(meter.over_cap),
        _to_bits(meter.alerted),
        meter.blocked,
        str(meter.late_unbilled),
        through_seq,
    )


# The store's other statements, with named parameters, run through the session (cap changes,
# seals, accounts opening: one account or one seal batch at a time, not the calls path).
OPEN_ACCOUNT = (
    "insert into accounts (account_id, billing_day, cap, open_cycle_start, open_cycle_end) "
    "values (:account_id, :billing_day, :cap, :open_cycle_start, :open_cycle_end) on conflict do nothing"
)
SET_CAP = "update accounts set cap = :cap, meter_epoch = meter_epoch + 1 where account_id = :account_id"
METER_KEYS = "unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[])) as wanted(account_id, cycle_start)"
# Under the metering lock held alone (a cap change, a seal): no batch of calls runs meanwhile, and
# the snapshots written from memory take the lock shared, so these meters stay as read.
METERS_AS_THEY_STAND = (
    f"select {METER_COLUMNS} from meters m join {METER_KEYS} on m.account_id = wanted.account_id "
    "and m.cycle_start = wanted.cycle_start order by 1, 2"
)
# Written where a cap change or a seal read them: the snapshot then holds all the meter's calls.
SAVE_METERS = (
    f"insert into meter_snapshots ({SNAPSHOT_COLUMNS}) select * from unnest(cast(:account_ids as text[]), "
    "cast(:cycle_starts as date[]), cast(:cycle_ends as date[]), cast(:caps as numeric[]), "
    "cast(:billable as numeric[]), cast(:over_cap as numeric[]), cast(:alerted as smallint[]), "
    "cast(:blocked as boolean[]), cast(:late_unbilled as numeric[]), cast(:through_seqs as integer[])) "
    f"on conflict (account_id, cycle_start) do update set {SNAPSHOT_UPDATE}"
)
LATE_METERS = (
    f"select {METER_COLUMNS} from meters m join {METER_KEYS} on m.account_id = wanted.account_id "
    "and m.cycle_start < wanted.cycle_start and m.late_unbilled > 0 order by 1, 2"
)
MOVE_OPEN_CYCLES = (
    "update accounts a set open_cycle_start = moved.open_cycle_start, open_cycle_end = moved.open_cycle_end, "
    "meter_epoch = a.meter_epoch + 1 from unnest(cast(:account_ids as text[]), cast(:open_cycle_starts as date[]), "
    "cast(:open_cycle_ends as date[])) as moved(account_id, open_cycle_start, open_cycle_end) "
    "where a.account_id = moved.account_id"
)


def _meter(row: Any) -> Meter:
    return Meter(row.cap, row.billable, row.over_cap, _from_bits(row.alerted), row.blocked, row.late_unbilled)


class MeterStore:
    def __init__(
        self,
        session: AsyncSession,
        recent_calls: RecentCalls | None = None,
        memory: MeterMemory | None = None,
        account_cache: AccountCache | None = None,
    ) -> None:
        self.session = session
        self.seals = SealLedger(session)
        self.recent_calls = recent_calls if recent_calls is not None else RecentCalls(0)
        self.memory = memory if memory is not None else MeterMemory()
        self.account_cache = account_cache if account_cache is not None else AccountCache()
        self._positions: dict[MeterKey, int] = {}  # of the meters read by ``meters``, for ``save_meters``
        self._conn: Any = None
        self._claimed: set[CallKey] = set()  # ids this transaction claimed in call_ids (``record_calls``)

    async def _driver(self, first: str | None = None) -> Any:
        """The asyncpg connection under this session's transaction (``first``: see
        ``driver_connection``). The calls path uses it directly: SQLAlchemy's per-row and
        per-parameter work costs microseconds a row, and each of its ``session.connection()``
        a greenlet switch."""
        if self._conn is None:
            self._conn = await driver_connection(self.session, first)
        elif first is not None:
            await self._conn.execute(first)
        return self._conn

    async def share_metering(self) -> None:
        # Without parameters: a simple query, sent with BEGIN when it is the transaction's first.
        await self._driver(f"select pg_advisory_xact_lock_shared({METERING_LOCK})")

    async def own_metering(self) -> None:
        await self._driver(f"select pg_advisory_xact_lock({METERING_LOCK})")

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
        return _accounts_of(rows)

    async def accounts_for_calls(self, account_ids: Iterable[str]) -> dict[str, Account]:
        """The accounts of a batch of calls (under the metering lock held shared): those this
        process holds at the current version of the accounts table, and the others read, in one
        statement. When the version moved (a cap change, a seal), the held ones are read again in
        a second. What was read is held once this transaction commits."""
        cache = self.account_cache
        held = cache.accounts
        wanted = list(account_ids)
        hits = {a: held[a] for a in wanted if a in held}
        version, found = await self._accounts_at_version([a for a in wanted if a not in hits])
        if hits and version != cache.version:
            found |= (await self._accounts_at_version(list(hits)))[1]
            hits = {}
        if found or version != cache.version:
            sa.event.listen(
                self.session.sync_session, "after_commit", lambda _: cache.update(version, found), once=True
            )
        return hits | found if hits else found

    async def _accounts_at_version(self, account_ids: list[str]) -> tuple[int, dict[str, Account]]:
        rows = await (await self._driver()).fetch(ACCOUNTS_AT_VERSION, account_ids)
        if not rows:
            raise RuntimeError("accounts_version has no row (usage metering's migration 0012 inserts it)")
        return rows[0]["version"], _accounts_of(rows)

    async def set_cap(self, account_id: str, cap: Decimal) -> None:
        await self.session.execute(sa.text(SET_CAP), {"account_id": account_id, "cap": cap})

    async def recorded_before(self, keys: list[CallKey]) -> set[CallKey]:
        """Of these calls, those already in the ledger. Asked only for the calls of meters the memory
        does not hold: a worker that has just started or taken over a partition (a replay, a
        restart) reads neither the meters nor the ledger's parts for calls it will not charge. Read
        only and not waiting for other transactions: the ``call_ids`` key stays the authority
        (``record_calls``)."""
        if not keys:
            return set()
        found = await (await self._driver()).fetch(RECORDED_CALLS, _json(keys))
        return {(account_id, call_id) for account_id, call_id in found}

    def meters_in_memory(self, wanted: dict[MeterKey, Account]) -> dict[MeterKey, Tracked]:
        """Those of these meters the memory holds at their account's epoch."""
        get = self.memory.get
        found = {}
        for key, account in wanted.items():
            held = get(key[0], account.meter_epoch, key[1])
            if held is not None:
                found[key] = held
        return found

    async def meters_from_database(self, wanted: dict[MeterKey, tuple[Account, Cycle]]) -> dict[MeterKey, Tracked]:
        """These meters as they stand in the database; one that has no row yet is empty (its row is
        made with its first calls: ``create_meters``)."""
        found: dict[MeterKey, Tracked] = {}
        if not wanted:
            return found
        rows = await (await self._driver()).fetch(METERS_BY_KEY, _json([(a, str(s)) for a, s in wanted]))
        for row in rows:
            key = (row["account_id"], row["cycle_start"])
            found[key] = Tracked(
                in_micros(_meter_of(row)),
                Cycle(row["cycle_start"], row["cycle_end"]),
                row["through_seq"],
                row["snapshot_seq"],
            )
        for key, (account, cycle) in wanted.items():
            if key not in found:
                found[key] = Tracked(in_micros(Meter(cap=account.cap)), cycle, 0, -1)
        return found

    async def record_calls(self, rows: list[Call]) -> set[CallKey]:
        """Record the calls by (account, call id), each pair at most once in ``rows``, all of them or
        none: the pairs recorded before (a repeat report: no second charge) are returned, and then
        no row of ``rows`` is written (the fold that gave their places and parts counted them);
        the caller folds again without them and records the rest.

        Two binary COPYs: the ids into ``call_ids`` (the key that says a call was charged, ever),
        then the rows into ``calls``, about twice the rate of the deduplicating insert and half its
        PostgreSQL CPU (docs/architecture.md, Decisions). A COPY that hits a key aborts the
        transaction: ``RecentCalls.missed`` is set and the batch is retried (``ConcurrentUpdate``),
        and then its ids are claimed with the deduplicating insert first, which waits for a
        concurrent claim of the same call to commit or roll back and names the calls recorded
        before. No savepoint guards the COPYs: a hit is rare (a repeat older than ``RecentCalls``,
        another replica's call), and a savepoint is a round trip in every batch. A place in a
        meter taken meanwhile by another call (another transaction folded the same meter: its ids
        differ from these) refuses the rows: the batch is retried, its accounts' meters read
        again from the database.

        The rows go in sorted by account and call id, the order of both keys: consecutive
        insertions then land on the same or the next index pages, which costs PostgreSQL about a
        fifth less than a batch's calls in the order they came (docs/architecture.md, Decisions)."""
        if not rows:
            return set()
        rows = sorted(rows)  # by account id, then call id: each pair is in rows once
        conn = await self._driver()
        recent = self.recent_calls
        try:
            if recent.missed:
                unclaimed = [(a, c, str(s)) for a, c, _, s, _, _, _ in rows if (a, c) not in self._claimed]
                if unclaimed:
                    found = await conn.fetch(CLAIM_CALL_IDS, _json(unclaimed))
                    repeats = {(unclaimed[index][0], unclaimed[index][1]) for (index,) in found}
                    self._claimed |= {(a, c) for a, c, _ in unclaimed} - repeats
                    if repeats:
                        return repeats  # the others stay claimed by this transaction
                    recent.missed = False
            else:
                ids = [(a, c, s) for a, c, _, s, _, _, _ in rows]
                await conn.copy_records_to_table(call_ids.name, records=ids, columns=CALL_IDS_COLUMNS)
            await conn.copy_records_to_table(calls.name, records=rows, columns=CALLS_COLUMNS)
        except asyncpg.UniqueViolationError as exc:
            if exc.table_name == call_ids.name:
                recent.missed = True
                raise ConcurrentUpdate(
                    f"a call of this batch was recorded before: claimed first next time ({exc})"
                ) from exc
            self.memory.drop({row[0] for row in rows})
            raise ConcurrentUpdate(f"a place in a meter of this batch was taken meanwhile: {exc}") from exc
        return set()

    async def create_meters(self, new: list[tuple[str, Tracked]]) -> None:
        """The first row of each of these meters, empty (``through_seq`` 0): the view ``meters``
        shows a meter from its first calls on."""
        if new:
            rows = [_snapshot_row(a, t.cycle, Meter(cap=t.meter.cap), 0) for a, t in new]
            await (await self._driver()).execute(CREATE_METERS, _json(rows))

    def remember(
        self,
        states: dict[MeterKey, Tracked],
        epochs: dict[str, int],
        charged: set[CallKey],
        stale: set[str],
        in_memory: bool,
    ) -> None:
        """When this transaction commits: the folded meters into memory (``in_memory``; ``stale``:
        accounts whose meters were found behind the database, forgotten first), and ``charged``,
        the calls now in the ledger (charged by this batch or found charged before), into
        ``RecentCalls``."""
        memory, recent = self.memory, self.recent_calls

        def committed(_: Any) -> None:
            if in_memory:
                memory.apply(states, epochs, stale)
            recent.add(charged)

        sa.event.listen(self.session.sync_session, "after_commit", committed, once=True)

    async def save_snapshots(self, meters: list[tuple[str, Tracked]]) -> set[MeterKey]:
        """Write these meters back as snapshots where each moves forward; returns the keys written."""
        if not meters:
            return set()
        rows = [_snapshot_row(a, t.cycle, in_usd(t.meter), t.position) for a, t in meters]
        written = await (await self._driver()).fetch(SAVE_SNAPSHOTS, _json(rows))
        return {(account_id, cycle_start) for account_id, cycle_start in written}

    async def meters(self, keys: Iterable[MeterKey]) -> dict[MeterKey, Meter]:
        """The meters for these (account, cycle start) pairs as they stand, for a cap change or a
        seal (under the metering lock held alone)."""
        keys = sorted(set(keys))
        if not keys:
            return {}
        rows = await self.session.execute(
            sa.text(METERS_AS_THEY_STAND),
            {"account_ids": [account for account, _ in keys], "cycle_starts": [start for _, start in keys]},
        )
        found = {}
        for row in rows:
            found[(row.account_id, row.cycle_start)] = _meter(row)
            self._positions[(row.account_id, row.cycle_start)] = row.through_seq
        return found

    async def save_meters(self, changed: dict[tuple[str, Cycle], Meter]) -> None:
        """Snapshots of meters read with ``meters`` or ``late_meters_many`` (or new), holding all their calls."""
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
                "through_seqs": [self._positions.get((account, cycle.start), 0) for account, cycle in changed],
            },
        )

    # ------------------------------------------------------------------ set-based, for sealing many accounts at once
    async def late_meters_many(self, before: list[tuple[str, date]]) -> dict[str, list[tuple[Cycle, Meter]]]:
        """Per account: sealed cycles (before the given start) with late usage not yet billed."""
        rows = await self.session.execute(
            sa.text(LATE_METERS),
            {"account_ids": [account for account, _ in before], "cycle_starts": [start for _, start in before]},
        )
        found: dict[str, list[tuple[Cycle, Meter]]] = {}
        for row in rows:
            found.setdefault(row.account_id, []).append((Cycle(row.cycle_start, row.cycle_end), _meter(row)))
            self._positions[(row.account_id, row.cycle_start)] = row.through_seq
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


def _meter_of(row: Any) -> Meter:
    """A meter from an asyncpg record of METER_COLUMNS."""
    return Meter(
        row["cap"],
        row["billable"],
        row["over_cap"],
        _from_bits(row["alerted"]),
        row["blocked"],
        row["late_unbilled"],
    )
