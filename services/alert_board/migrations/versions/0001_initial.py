"""Alert board's first schema: the runtime tables, every alert received, each account's standing.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.Uuid, primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", sa.Uuid, nullable=False),
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
        sa.Column("record_timestamp", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("topic", "partition", "offset", "record_timestamp", name="dead_letters_source_key"),
    )
    op.create_table(
        "parked",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False, index=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column(
            "kind", sa.Text, nullable=False, comment="threshold, blocked, unblocked, cap_changed, cap_change_refused"
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cycle_start", sa.Date, nullable=True, comment="none for a refused cap change"),
        sa.Column("accrued", sa.Numeric(20, 6), nullable=True),
        sa.Column("cap", sa.Numeric(14, 2), nullable=True),
        sa.Column("threshold_percent", sa.SmallInteger, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("alerts_by_account", "alerts", ["account_id", "occurred_at"])
    op.create_table(
        "standings",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("cycle_start", sa.Date, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cap", sa.Numeric(14, 2), nullable=True),
        sa.Column("accrued", sa.Numeric(20, 6), nullable=True),
        sa.Column("threshold_percent", sa.SmallInteger, nullable=True),
        sa.Column("blocked", sa.Boolean, nullable=False),
        sa.Column("blocked_since", sa.DateTime(timezone=True), nullable=True),
    )
    # The page's two lists: the few accounts blocked or near their cap among many.
    op.create_index(
        "standings_on_the_board",
        "standings",
        ["threshold_percent"],
        postgresql_where=sa.text("blocked or threshold_percent >= 80"),
    )
