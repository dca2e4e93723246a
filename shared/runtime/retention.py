"""Bounded runtime tables: the inbox kept for a retention window, dead letters for their own.

The inbox is partitioned by the UTC week a message was claimed in (``bucket``, its Monday). A
partition is dropped whole once its newest claim is older than the retention: the worker detaches
it with ``DETACH PARTITION ... CONCURRENTLY`` (which does not block the claims going on) and drops
the detached table; no row is deleted one by one. Dead letters are few: they are deleted in small
batches once older than their own retention (their re-drive records with them).

One message is still processed once, however it is partitioned: ``CLAIM_INBOX`` looks the ids up
in every partition and inserts them into this week's. Two claims of one id that run at the same
time, one begun just before a week's start and one just after, would not see each other there;
so in the first hour of a week a claim also inserts the id into the week before, where the other
claim's row is and the primary key makes the later one wait and find it. Each transaction
that claims is far shorter than an hour (a batch; Kafka takes a consumer's partitions after
``max_poll_interval_ms``, 5 minutes, anyway), so a claim begun more than an hour before is
committed, and visible to the lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

# $1: message ids (uuid[]), $2: their topics (text[]); returns the ids that were not claimed before.
CLAIM_INBOX = (
    "with utc as (select now() at time zone 'utc' as t), "
    "buckets as (select date_trunc('week', t)::date as bucket from utc union all "
    "select (date_trunc('week', t) - interval '7 days')::date from utc "
    "where t - date_trunc('week', t) < interval '1 hour'), "
    "given as (select * from unnest($1::uuid[], $2::text[]) as g(message_id, topic)), "
    "fresh as (select g.message_id, g.topic from given g "
    "where not exists (select from inbox i where i.message_id = g.message_id)), "
    "claimed as (insert into inbox (message_id, topic, bucket) select f.message_id, f.topic, b.bucket "
    "from fresh f cross join buckets b on conflict do nothing returning message_id) "
    "select message_id from claimed group by message_id having count(*) = (select count(*) from buckets)"
)

RETENTION_LOCK = 7240003  # one replica of a service at a time maintains its tables
WEEKS_AHEAD = 2  # partitions created ahead of need: a worker down for a while still finds one
DEAD_LETTER_BATCH = 1000
CLAIM_OVERLAP = timedelta(hours=1)  # a week's claims also go to the week before for this long


def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def partition_name(week: date) -> str:
    return f"inbox_{week:%Y%m%d}"


@dataclass(frozen=True)
class Pruned:
    created: list[str]
    dropped: list[str]
    dead_letters_deleted: int


def expired_weeks(weeks: list[date], now: datetime, retention: timedelta) -> list[date]:
    """The weeks whose partition may go: its newest claim (up to the week's end plus the overlap
    of the next week's first hour) is older than ``retention``."""
    return [
        w
        for w in weeks
        if datetime.combine(w + timedelta(days=7), datetime.min.time(), UTC) + CLAIM_OVERLAP + retention <= now
    ]


async def _attached_weeks(conn: Any) -> dict[date, str]:
    rows = await conn.fetch(
        "select c.relname, i.inhdetachpending from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = 'inbox'::regclass"
    )
    weeks: dict[date, str] = {}
    for row in rows:
        if row["inhdetachpending"]:  # a detach cut short (a crash): finish it, then it is dropped below
            await conn.execute(f'alter table inbox detach partition "{row["relname"]}" finalize')
            continue
        weeks[datetime.strptime(row["relname"], "inbox_%Y%m%d").date()] = row["relname"]
    return weeks


async def add_week(conn: Any, week: date) -> str:
    """Create and attach the inbox partition of ``week`` (a Monday); its name."""
    name = partition_name(week)
    # Created apart and then attached: ``create table ... partition of`` would lock the whole
    # inbox against the claims; attaching an empty table takes a lock they do not wait for.
    await conn.execute(f'create table if not exists "{name}" (like inbox including defaults)')
    await conn.execute(
        f"alter table inbox attach partition \"{name}\" for values from ('{week}') to ('{week + timedelta(days=7)}')"
    )
    return name


async def prune_once(
    conn: Any, inbox_retention: timedelta, dead_letter_retention: timedelta, now: datetime | None = None
) -> Pruned:
    """Create the coming weeks' partitions, drop the expired ones, delete expired dead letters.

    ``conn`` is an asyncpg connection outside any transaction (a concurrent detach cannot run in one).
    """
    now = now or datetime.now(UTC)
    attached = await _attached_weeks(conn)
    created = []
    this_week = monday(now.date())
    for ahead in range(WEEKS_AHEAD + 1):
        week = this_week + timedelta(weeks=ahead)
        if week in attached:
            continue
        created.append(await add_week(conn, week))
    dropped = []
    for week in expired_weeks(sorted(attached), now, inbox_retention):
        name = attached[week]
        await conn.execute(f'alter table inbox detach partition "{name}" concurrently')
        await conn.execute(f'drop table "{name}"')
        dropped.append(name)
    # Tables left detached by a crash between the detach and the drop.
    for row in await conn.fetch(
        "select c.relname from pg_class c where c.relname ~ '^inbox_[0-9]{8}$' and c.relkind = 'r' "
        "and not c.relispartition"
    ):
        week = datetime.strptime(row["relname"], "inbox_%Y%m%d").date()
        if expired_weeks([week], now, inbox_retention):
            await conn.execute(f'drop table "{row["relname"]}"')
            dropped.append(row["relname"])
    deleted = 0
    while True:
        status = await conn.execute(
            "delete from dead_letters where id in (select id from dead_letters where failed_at < $1 "
            "order by id limit $2)",
            now - dead_letter_retention,
            DEAD_LETTER_BATCH,
        )
        count = int(status.rsplit(" ", 1)[1])
        deleted += count
        if count < DEAD_LETTER_BATCH:
            break
    return Pruned(created, dropped, deleted)


class Retention:
    """The worker's task that keeps the runtime tables bounded: once at start-up (before any claim
    needs this week's partition), then every ``interval_s``; one replica at a time."""

    def __init__(
        self, service: str, dsn: str, inbox_retention_days: int, dead_letter_retention_days: int, interval_s: float
    ) -> None:
        self.service = service
        self.dsn = dsn
        self.inbox_retention = timedelta(days=inbox_retention_days)
        self.dead_letter_retention = timedelta(days=dead_letter_retention_days)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> Pruned | None:
        """None when another replica holds the maintenance lock (it does the same work)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            if not await conn.fetchval("select pg_try_advisory_lock($1)", RETENTION_LOCK):
                return None
            try:
                pruned = await prune_once(conn, self.inbox_retention, self.dead_letter_retention)
            finally:
                await conn.execute("select pg_advisory_unlock($1)", RETENTION_LOCK)
        finally:
            await conn.close()
        if pruned.created or pruned.dropped or pruned.dead_letters_deleted:
            log.info(
                "retention: partitions created %s, dropped %s; dead letters deleted %d",
                pruned.created,
                pruned.dropped,
                pruned.dead_letters_deleted,
                extra={"service": self.service},
            )
        return pruned

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention failed; retrying at the next interval", extra={"service": self.service})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
