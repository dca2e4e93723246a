"""Usage metering: meters folded in the worker's memory, the calls ledger the truth.

Each call in ``calls`` now holds what the fold decided for it: its place in its meter (``seq``,
1, 2, ... per account and cycle) and its ``billable`` and ``over_cap`` parts. The meter rows become
snapshots (``meter_snapshots``), written every so often, each saying how far into its calls it
reaches (``through_seq``). ``meters`` is now a view: a snapshot plus its calls after it, which is
exactly the meter the fold holds (``through_seq`` there: the calls it holds; ``snapshot_seq``: those
its snapshot holds). ``accounts.meter_epoch`` is bumped by every change of an
account's meters outside the calls path (a cap change, a seal), so a worker knows its memory of
that account is stale.

Calls recorded before this revision keep ``seq`` 0 and parts 0: the meters they went into already
hold them, and a snapshot starts at ``through_seq`` 0. The per-write ``version`` goes: snapshots are
ordered by ``through_seq``.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"

# The meter of one snapshot: its calls after ``through_seq`` added, thresholds and the block as the
# fold gives them (a call of a cycle before the account's open one is late: no alert, no block).
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


def upgrade() -> None:
    op.execute("alter table meters rename to meter_snapshots")
    op.execute("alter table meter_snapshots rename constraint meters_pkey to meter_snapshots_pkey")
    op.drop_column("meter_snapshots", "version")
    op.add_column(
        "meter_snapshots",
        sa.Column(
            "through_seq",
            sa.Integer,
            nullable=False,
            server_default="0",
            comment="the meter's calls (calls.seq) this snapshot holds: 1 to through_seq",
        ),
    )
    for name, type_ in (("seq", sa.Integer()), ("billable", sa.Numeric(20, 6)), ("over_cap", sa.Numeric(20, 6))):
        op.add_column("calls", sa.Column(name, type_, nullable=False, server_default="0"))
        op.alter_column("calls", name, server_default=None)
    op.alter_column(
        "calls",
        "seq",
        existing_type=sa.Integer,
        existing_nullable=False,
        comment="the call's place in its meter (account, cycle): 1, 2, ...; 0 before meters in memory",
    )
    op.add_column(
        "accounts",
        sa.Column(
            "meter_epoch",
            sa.Integer,
            nullable=False,
            server_default="0",
            comment="bumped when a cap change or a seal changes the account's meters",
        ),
    )
    op.execute(METERS_VIEW)


def downgrade() -> None:
    # The snapshots take in the calls after them first: the parts go with the columns.
    op.execute(
        "update meter_snapshots s set billable = m.billable, over_cap = m.over_cap, alerted = m.alerted, "
        "blocked = m.blocked, late_unbilled = m.late_unbilled from meters m "
        "where m.account_id = s.account_id and m.cycle_start = s.cycle_start"
    )
    op.execute("drop view meters")
    op.drop_column("accounts", "meter_epoch")
    for name in ("seq", "billable", "over_cap"):
        op.drop_column("calls", name)
    op.drop_column("meter_snapshots", "through_seq")
    op.add_column(
        "meter_snapshots",
        sa.Column("version", sa.Integer, nullable=False, server_default="0", comment="bumped by every write"),
    )
    op.execute("alter table meter_snapshots rename constraint meter_snapshots_pkey to meters_pkey")
    op.execute("alter table meter_snapshots rename to meters")
