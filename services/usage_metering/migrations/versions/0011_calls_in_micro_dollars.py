"""Usage metering: the calls ledger's amounts in integer micro-dollars (``bigint``, 1 = 0.000001 USD).

``calls.cost``, ``calls.billable`` and ``calls.over_cap`` were ``numeric(20, 6)``: every amount
has at most 6 decimal places (the contract refuses a cost with more, and a part is a cost, a cap
of cents less an accrual, or their difference), so as micro-dollars they are the same amounts,
exactly. The worker writes them by binary ``COPY``, where asyncpg's encoding of a ``Decimal`` into
a numeric costs about 1.5 µs of the worker's CPU per amount and an ``int`` into a ``bigint`` about a
tenth of that; PostgreSQL reads a ``bigint`` cheaper too, and sums it cheaper in the view.

The view ``meters`` turns the sums back into USD: ``sum(bigint)`` is a numeric of scale 0, and
times ``0.000001`` one of scale 6, exactly the amount (no division, no rounding). Nothing outside
the ledger sees micro-dollars: the view, the snapshots and every message carry USD as before.

A month archived before this revision keeps its detached table in ``numeric``: to attach it again
by hand (``partitions.py``), first ``alter table calls_YYYYMM alter column cost type bigint using
(cost * 1000000)::bigint`` and the same for ``billable`` and ``over_cap``.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"

AMOUNTS = ("cost", "billable", "over_cap")
MICRO_COMMENT = "micro-dollars (1 = 0.000001 USD)"

# As revision 0010 made it, with the calls' micro-dollars summed and then made USD (scale 6, exact).
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
OLD_METERS_VIEW = METERS_VIEW.replace(
    "coalesce(sum(c.billable) * 0.000001, 0) as billable, coalesce(sum(c.over_cap) * 0.000001, 0) as over_cap",
    "coalesce(sum(c.billable), 0) as billable, coalesce(sum(c.over_cap), 0) as over_cap",
)


def upgrade() -> None:
    op.execute("drop view meters")
    # One statement: the table (with every partition) is rewritten once, not once per column.
    op.execute(
        "alter table calls "
        + ", ".join(f"alter column {name} type bigint using ({name} * 1000000)::bigint" for name in AMOUNTS)
    )
    for name in AMOUNTS:
        op.execute(f"comment on column calls.{name} is '{MICRO_COMMENT}'")
    op.execute(METERS_VIEW)


def downgrade() -> None:
    op.execute("drop view meters")
    op.execute(
        "alter table calls "
        + ", ".join(f"alter column {name} type numeric(20, 6) using {name} * 0.000001" for name in AMOUNTS)
    )
    for name in AMOUNTS:
        op.execute(f"comment on column calls.{name} is null")
    op.execute(OLD_METERS_VIEW)
