"""Usage metering's first schema: runtime tables, accounts, meters, calls, seals.

A frozen snapshot of the first release: later changes are later revisions.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    # The runtime's tables (inbox, outbox, dead letters, parked events) as the first release had them.
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.Uuid, primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("topic", "partition", "offset", name="dead_letters_source_key"),
    )
    op.create_table(
        "parked",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False, index=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("billing_day", sa.SmallInteger, nullable=False),
        sa.Column("cap", sa.Numeric(14, 2), nullable=False),
        sa.Column("open_cycle_start", sa.Date, nullable=False),
        sa.Column("open_cycle_end", sa.Date, nullable=False),
    )
    op.create_table(
        "meters",
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
    op.create_table(
        "calls",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("call_id", sa.Text, primary_key=True),
        sa.Column("cost", sa.Numeric(20, 6), nullable=False),
        sa.Column("cycle_start", sa.Date, nullable=False),
    )
    op.create_table(
        "seals",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("cycle_start", sa.Date, primary_key=True),
        sa.Column("event", sa.LargeBinary, nullable=False),
    )
