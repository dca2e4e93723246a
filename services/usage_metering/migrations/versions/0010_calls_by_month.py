"""Usage metering: the calls ledger partitioned by the month its cycles start in, so old cycles can
be archived, and each call's id kept apart, for good.

- ``call_ids`` (primary key account_id, call_id; with the cycle the call was charged in): the
  authority on "a call is charged once, ever". One table, never partitioned nor archived:
  PostgreSQL has no unique index across partitions, and a call reported again with another date
  (across a cycle boundary, or after its cycle was archived) must still meet its key.
- ``calls`` is partitioned by range on ``cycle_start``: one partition per calendar month
  (``calls_YYYYMM``: the cycles that start in it) and a default one (``calls_default``) so that an
  insert never fails for want of a partition. Its key is (account_id, cycle_start, seq): a meter's
  calls in order, what the view ``meters`` reads after a snapshot; two calls can no longer take
  one place in a meter. The worker makes the coming months' partitions (``partitions.py``).
- ``call_archives``: the months whose partition was detached (``billing calls archive``), which
  reads a month's snapshots by their cycle (``meter_snapshots_by_cycle``).

Calls recorded before revision 0009 have ``seq`` 0 (their meters' snapshots hold them); they get
places below 0 here, -1, -2, ... per meter, which the view never adds (it adds those after the
snapshot's ``through_seq``, at least 0). This month's partition and the next two are made, with
one for each month the existing calls' cycles start in, but for a month whose table is there
already (archived before a downgrade: its calls, back as keys, go to the default partition).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"

# As revision 0009 made it: a view is bound to the table it reads, so it is made again on the new one.
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
    select coalesce(sum(c.billable), 0) as billable, coalesce(sum(c.over_cap), 0) as over_cap,
           count(*) as calls, max(c.seq) as last_seq
    from calls c
    where c.account_id = s.account_id and c.cycle_start = s.cycle_start and c.seq > s.through_seq
) l
"""
SEQ_COMMENT = "the call's place in its meter (account, cycle): 1, 2, ...; below 1 before meters in memory"
OLD_SEQ_COMMENT = "the call's place in its meter (account, cycle): 1, 2, ...; 0 before meters in memory"
COLUMNS = "account_id, call_id, cost, cycle_start, seq, billable, over_cap"


def upgrade() -> None:
    op.execute("drop view meters")
    op.execute("alter table calls rename to calls_unpartitioned")
    op.execute("alter table calls_unpartitioned rename constraint calls_pkey to calls_unpartitioned_pkey")
    op.execute(
        "create table calls (account_id text not null, call_id text not null, cost numeric(20, 6) not null, "
        "cycle_start date not null, seq integer not null, billable numeric(20, 6) not null, "
        "over_cap numeric(20, 6) not null, constraint calls_pkey primary key (account_id, cycle_start, seq)) "
        "partition by range (cycle_start)"
    )
    op.execute("comment on column calls.seq is '{}'".format(SEQ_COMMENT.replace("'", "''")))
    op.execute("create table calls_default partition of calls default")
    op.execute(
        "do $$ declare month_start date; begin for month_start in "
        "select distinct date_trunc('month', cycle_start)::date from calls_unpartitioned union "
        "select (date_trunc('month', now() at time zone 'utc') + make_interval(months => ahead))::date "
        "from generate_series(0, 2) ahead "
        "loop continue when to_regclass('calls_' || to_char(month_start, 'YYYYMM')) is not null; "
        "execute format('create table %I partition of calls for values from (%L) to (%L)', "
        "'calls_' || to_char(month_start, 'YYYYMM'), month_start, (month_start + interval '1 month')::date); end loop; end $$"
    )
    op.execute(f"insert into calls ({COLUMNS}) select {COLUMNS} from calls_unpartitioned where seq <> 0")
    op.execute(
        f"insert into calls ({COLUMNS}) select account_id, call_id, cost, cycle_start, "
        "-row_number() over (partition by account_id, cycle_start order by call_id), billable, over_cap "
        "from calls_unpartitioned where seq = 0"
    )
    op.execute(
        "create table call_ids (account_id text not null, call_id text not null, cycle_start date not null, "
        "constraint call_ids_pkey primary key (account_id, call_id))"
    )
    op.execute("comment on column call_ids.cycle_start is 'the cycle the call was charged in (where its calls row is)'")
    op.execute("insert into call_ids select account_id, call_id, cycle_start from calls_unpartitioned")
    op.execute("drop table calls_unpartitioned")
    op.execute(
        "create table call_archives (month date not null, partition text not null, calls bigint not null, "
        "archived_at timestamp with time zone not null default now(), archived_by text not null, "
        "constraint call_archives_pkey primary key (month))"
    )
    op.execute(
        "comment on column call_archives.month is 'the month (its first day) whose cycles'' calls were detached'"
    )
    # The archive reads one month's snapshots (not updated in the index: a snapshot's write stays in place).
    op.execute("create index meter_snapshots_by_cycle on meter_snapshots (cycle_start)")
    op.execute(METERS_VIEW)


def downgrade() -> None:
    # Calls of archived months come back as their keys only (cost and parts 0, place 0: their
    # meters' snapshots hold them), so a call is still charged once; their rows are in the
    # detached tables named in call_archives, which stay as they are.
    op.execute("drop view meters")
    op.execute("alter table calls rename to calls_partitioned")
    op.execute("alter table calls_partitioned rename constraint calls_pkey to calls_partitioned_pkey")
    op.execute(
        "create table calls (account_id text not null, call_id text not null, cost numeric(20, 6) not null, "
        "cycle_start date not null, seq integer not null, billable numeric(20, 6) not null, "
        "over_cap numeric(20, 6) not null, constraint calls_pkey primary key (account_id, call_id))"
    )
    op.execute("comment on column calls.seq is '{}'".format(OLD_SEQ_COMMENT.replace("'", "''")))
    op.execute(
        f"insert into calls ({COLUMNS}) select account_id, call_id, cost, cycle_start, greatest(seq, 0), billable, "
        "over_cap from calls_partitioned"
    )
    op.execute(
        f"insert into calls ({COLUMNS}) select account_id, call_id, 0, cycle_start, 0, 0, 0 from call_ids "
        "on conflict do nothing"
    )
    op.execute("drop table calls_partitioned")  # with its partitions
    op.execute("drop table call_ids")
    op.execute("drop table call_archives")
    op.execute("drop index meter_snapshots_by_cycle")
    op.execute(METERS_VIEW)
