"""Alert board's first schema: the runtime tables, every alert received, each account's standing.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    # The inbox partitioned by the UTC week of the claim, as the other services' inboxes are since
    # their inbox_by_week revisions (shared/runtime/retention.py claims, creates and drops weeks).
    op.execute(
        "create table inbox (message_id uuid not null, topic text not null, "
        "processed_at timestamp with time zone not null default now(), "
        "bucket date not null, constraint inbox_pkey primary key (message_id, bucket)) partition by range (bucket)"
    )
    op.execute("comment on column inbox.bucket is 'the UTC week (its Monday) the message was claimed in'")
    op.execute(
        "do $$ declare monday date := date_trunc('week', now() at time zone 'utc')::date; "
        "begin for week in 0..2 loop execute format("
        "'create table %I partition of inbox for values from (%L) to (%L)', "
        "'inbox_' || to_char(monday + 7 * week, 'YYYYMMDD'), monday + 7 * week, monday + 7 * (week + 1)); "
        "end loop; end $$"
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
        "dead_letter_replays",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "dead_letter_id", sa.BigInteger, sa.ForeignKey("dead_letters.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("replayed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("replayed_by", sa.Text, nullable=False),
        sa.Column("amended", sa.Boolean, nullable=False, comment="the value was replaced by hand"),
        sa.Column("to_partition", sa.Integer, nullable=False),
        sa.Column("to_offset", sa.BigInteger, nullable=False),
    )
    op.create_index("dead_letter_replays_by_letter", "dead_letter_replays", ["dead_letter_id"])
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
