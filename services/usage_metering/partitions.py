"""The calls ledger by month (migration 0010): the worker makes the coming months' partitions, an
operator archives the old ones (``billing calls archive``).

``calls`` is partitioned by the month its cycles start in (``calls_YYYYMM``), with a default
partition (``calls_default``) for a call of a month that has none, so an insert never fails.
What makes a call charged once, ever, is ``call_ids`` (one table, never archived), not ``calls``.

- **Partitions ahead** (``ensure_partitions``, ``CallPartitions``): at start-up and every
  ``BILLING_RETENTION_INTERVAL_S``, the worker makes this month's partition and the next two, and
  one for each month whose calls are in the default partition (they are moved into it), except the
  months archived. Nothing to make (nearly always): no lock is taken.
- **Archiving** (``archive``): a month's partition is detached once every cycle in it is sealed
  (every account's open cycle starts after the month) and the month ended before the date given.
  In the same transaction each of its meters' snapshots is first made to hold all the meter's
  calls (a late call after the seal is only in the ledger until the next snapshot or seal), so
  the view ``meters`` stays the same without the partition. The detached table (``calls_YYYYMM``)
  keeps the month's calls for a dump; the month is recorded in ``call_archives``. A month archived
  by mistake comes back by hand: its calls in ``calls_default`` moved into the table, then
  ``ALTER TABLE calls ATTACH PARTITION calls_YYYYMM FOR VALUES FROM (...) TO (...)`` and its row of
  ``call_archives`` deleted.
- **A call for an archived month** (a late call, an account opened late) is charged once like any
  other (its id goes to ``call_ids``) and its row lands in ``calls_default``, where the view adds it
  after the snapshot; it is billed on the next invoice as late usage. An archived month is never
  given a partition again, so those rows stay in the default partition (few: a call comes days
  after it was made, not months).

Both run under the metering lock held alone (``storage.METERING_LOCK``): no batch of calls writes
meanwhile, and a batch that reads the view (it locks every partition) is not in the way of the
attach or the detach. A detach takes an ``ACCESS EXCLUSIVE`` lock on ``calls`` for a moment
(``DETACH ... CONCURRENTLY`` is not allowed beside a default partition); a lock wait longer than
``LOCK_TIMEOUT`` gives up, and the next run tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from services.usage_metering.storage import METERING_LOCK

log = logging.getLogger(__name__)

MONTHS_AHEAD = 2
DEFAULT_PARTITION = "calls_default"
LOCK_TIMEOUT = "10s"


def month_of(day: date) -> date:
    return day.replace(day=1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"calls_{month:%Y%m}"


async def attached_months(conn: Any) -> dict[date, str]:
    """The months with a partition of their own, and its name."""
    rows = await conn.fetch(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = 'calls'::regclass and c.relname <> $1",
        DEFAULT_PARTITION,
    )
    return {datetime.strptime(r["relname"], "calls_%Y%m").date(): r["relname"] for r in rows}


async def archived_months(conn: Any) -> set[date]:
    return {r["month"] for r in await conn.fetch("select month from call_archives")}


async def default_months(conn: Any) -> set[date]:
    """The months of the calls in the default partition."""
    rows = await conn.fetch(f"select distinct date_trunc('month', cycle_start)::date as month from {DEFAULT_PARTITION}")
    return {r["month"] for r in rows}


async def _hold_metering(conn: Any) -> None:
    await conn.execute(f"set local lock_timeout = '{LOCK_TIMEOUT}'")
    await conn.execute(f"select pg_advisory_xact_lock({METERING_LOCK})")


async def _make_partition(conn: Any, month: date) -> str:
    """Make ``month``'s partition with the calls of it that are in the default partition. In a
    transaction holding the metering lock: created apart, filled, then attached (which checks that
    the default partition holds none of the month any more)."""
    name, end = partition_name(month), next_month(month)
    await conn.execute(f'create table "{name}" (like calls)')
    await conn.execute(
        f"with moved as (delete from {DEFAULT_PARTITION} where cycle_start >= $1 and cycle_start < $2 returning *) "
        f'insert into "{name}" select * from moved',
        month,
        end,
    )
    await conn.execute(f"alter table calls attach partition \"{name}\" for values from ('{month}') to ('{end}')")
    return name


async def ensure_partitions(conn: Any, today: date) -> list[str]:
    """Make the partitions missing (this month's, the next ``MONTHS_AHEAD``, and those of the
    months whose calls are in the default partition; never an archived month's); their names.
    ``conn``: an asyncpg connection outside a transaction."""
    ahead = [month_of(today)]
    for _ in range(MONTHS_AHEAD):
        ahead.append(next_month(ahead[-1]))
    done = set(await attached_months(conn)) | await archived_months(conn)
    if not (set(ahead) | await default_months(conn)) - done:
        return []
    made = []
    async with conn.transaction():
        await _hold_metering(conn)
        done = set(await attached_months(conn)) | await archived_months(conn)
        for month in sorted((set(ahead) | await default_months(conn)) - done):
            made.append(await _make_partition(conn, month))
    return made


@dataclass(frozen=True)
class Month:
    """A month of the calls ledger as the archive found it."""

    month: date
    partition: str | None  # None: its calls are in the default partition (it is given one to detach)
    calls: int
    open_cycles: int  # accounts whose open cycle starts before the month's end: not every cycle in it is sealed
    snapshots_behind: int  # meters whose snapshot does not hold all their calls yet (caught up first)

    @property
    def archivable(self) -> bool:
        return self.open_cycles == 0


@dataclass(frozen=True)
class Archive:
    before: date
    dry_run: bool
    months: list[Month]  # every month that ended before ``before``, not archived yet
    archived: list[Month]  # those detached (none in a dry run)


async def _month(conn: Any, month: date, partition: str | None) -> Month:
    end = next_month(month)
    calls = await conn.fetchval("select count(*) from calls where cycle_start >= $1 and cycle_start < $2", month, end)
    behind = await conn.fetchval(
        "select count(*) from meters where cycle_start >= $1 and cycle_start < $2 and through_seq > snapshot_seq",
        month,
        end,
    )
    return Month(month, partition, calls, await _open_cycles(conn, end), behind)


async def _open_cycles(conn: Any, end: date) -> int:
    return int(await conn.fetchval("select count(*) from accounts where open_cycle_start < $1", end))


# Each meter of a month made to hold all its calls: what the view shows, written into its snapshot
# (the snapshots found by their cycle, then a probe of each meter's calls after it by the key).
CATCH_UP = (
    "update meter_snapshots s set billable = m.billable, over_cap = m.over_cap, alerted = m.alerted, "
    "blocked = m.blocked, late_unbilled = m.late_unbilled, through_seq = m.through_seq from meters m "
    "where m.account_id = s.account_id and m.cycle_start = s.cycle_start and s.cycle_start >= $1 "
    "and s.cycle_start < $2 and m.through_seq > m.snapshot_seq"
)


async def archive(conn: Any, before: date, by: str, dry_run: bool = False) -> Archive:
    """Detach the partitions of the months that ended on or before ``before`` (and before today)
    whose every cycle is sealed. ``conn``: an asyncpg connection outside a transaction.

    What reads a whole month (its calls counted) runs without the metering lock, so the calls
    path goes on meanwhile. Each month is then archived in a transaction of its own that holds
    the lock alone for as long as it reads the accounts' open cycles, catches the month's
    snapshots up (one probe per meter) and detaches the partition."""
    today = await conn.fetchval("select (now() at time zone 'utc')::date")
    attached = await attached_months(conn)
    candidates = (set(attached) | await default_months(conn)) - await archived_months(conn)
    ended = sorted(m for m in candidates if next_month(m) <= min(before, today))
    months = [await _month(conn, m, attached.get(m)) for m in ended]
    archived: list[Month] = []
    for month in months:
        if dry_run or not month.archivable:
            continue
        end = next_month(month.month)
        async with conn.transaction():
            await _hold_metering(conn)
            if await _open_cycles(conn, end):  # an account opened meanwhile, in the month or before
                break
            name = month.partition or await _make_partition(conn, month.month)
            await conn.execute(CATCH_UP, month.month, end)
            await conn.execute(f'alter table calls detach partition "{name}"')
            await conn.execute(
                "insert into call_archives (month, partition, calls, archived_by) values ($1, $2, 0, $3)",
                month.month,
                name,
                by,
            )
        # Counted once detached (it blocks nothing then): with the late calls that came meanwhile.
        calls = await conn.fetchval(f'select count(*) from "{name}"')
        await conn.execute("update call_archives set calls = $2 where month = $1", month.month, calls)
        archived.append(Month(month.month, name, calls, 0, month.snapshots_behind))
    return Archive(before, dry_run, months, archived)


class CallPartitions:
    """The worker's task that makes the calls ledger's coming partitions: once as it starts, then
    every ``interval_s``."""

    def __init__(self, dsn: str, interval_s: float) -> None:
        self.dsn = dsn
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> list[str]:
        conn = await asyncpg.connect(self.dsn)
        try:
            made = await ensure_partitions(conn, datetime.now(UTC).date())
        finally:
            await conn.close()
        if made:
            log.info("calls partitions made: %s", made)
        return made

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="calls-partitions")

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # the default partition takes the calls meanwhile
                log.exception("calls partitions not made; trying again at the next interval")
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
