"""Usage metering: the ledger's keys compared byte by byte (collation ``"C"``).

``call_ids`` (its key: ``account_id``, ``call_id``) and ``calls`` (its key begins with
``account_id``) take an index entry for every call charged, and most of PostgreSQL's time in the
calls path goes to those two insertions. Under the database's collation (``C.UTF-8`` on the
project's stack) each comparison in the index goes through the C library's ``strcoll``; under
``"C"`` it is a ``memcmp``, and PostgreSQL can compare abbreviated keys: two binary ``COPY``s of
5,000 calls into tables of this shape cost PostgreSQL 6.2-6.7 µs a call instead of 6.7-7.2
(docs/architecture.md, Decisions).

The ids compare equal exactly when they did: both collations are deterministic. Only the order
of the index changes, which nothing reads: a query that compares these columns with text of the
database's collation compares under ``"C"`` (a column's collation wins over the default), so it
still looks the key up. ``calls_YYYYMM`` partitions made later copy the collation (``like
calls``). A month archived before this revision keeps its detached table as it was: to attach it
again by hand (``partitions.py``), first ``alter table calls_YYYYMM alter column account_id type
text collate "C"``.

The view ``meters`` reads these columns, so it is made again, as revision 0011 left it.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"

# As revision 0011 made it.
METERS_VIEW = """
create view meters as
select s.account_id, s.cycle_start, s.cycle_end, s.cap,
       s.billable + l.billable as billable,
       s.over_cap + l.over_cap as over_cap,
       case when l.calls = 0 or s.cycle_start < a.open_cycle_start then s.alerted
            else (s.alerted
                  | case when (s.billable + l.billable) * 100 >= s.cap * 50 then 1 else 0 end
                  | case when (s.billable + l.billable) * 100 >= s.cap * 80 then 2 else 0 end
                  | case when (s.billable + l.billable) * 100 >= s.cap * 100 then 4 else 0 end)::smallint
       end as alerted,
       case when l.calls = 0 or s.cycle_start < a.open_cycle_start then s.blocked
            else s.blocked or s.billable + l.billable >= s.cap
       end as blocked,
       s.late_unbilled + case when s.cycle_start < a.open_cycle_start then l.billable else 0 end as late_unbilled,
       coalesce(l.last_seq, s.through_seq) as through_seq,
       s.through_seq as snapshot_seq
from meter_snapshots s
join accounts a on a.account_id = s.account_id
cross join lateral (
    select coalesce(sum(c.billable) * 0.000001, 0) as billable, coalesce(sum(c.over_cap) * 0.000001, 0) as over_cap,
           count(*) as calls, max(c.seq) as last_seq
    from calls c
    where c.account_id = s.account_id and c.cycle_start = s.cycle_start and c.seq > s.through_seq
) l
"""


def _collate(collation: str) -> None:
    op.execute("drop view meters")
    op.execute(
        f'alter table call_ids alter column account_id type text collate "{collation}", '
        f'alter column call_id type text collate "{collation}"'
    )
    op.execute(f'alter table calls alter column account_id type text collate "{collation}"')
    op.execute(METERS_VIEW)


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")
