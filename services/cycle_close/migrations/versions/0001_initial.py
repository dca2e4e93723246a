"""Cycle close's first schema: runtime tables, billing accounts, close requests, devices, invoices.

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
        "billing_accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("billing_day", sa.SmallInteger, nullable=False),
        sa.Column(
            "next_close_start", sa.Date, nullable=False, comment="start of the oldest cycle not yet asked to close"
        ),
        sa.Column("next_close_end", sa.Date, nullable=False),
    )
    op.create_table(
        "cycle_closes",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("cycle_start", sa.Date, primary_key=True),
        sa.Column("cycle_end", sa.Date, nullable=False),
        sa.Column("trigger_id", sa.Uuid, nullable=False),
        sa.Column("license_report", sa.LargeBinary, nullable=True),
        sa.Column("usage_report", sa.LargeBinary, nullable=True),
        sa.Column("invoice_id", sa.Uuid, nullable=True),
        sa.Index("cycle_closes_by_trigger", "trigger_id"),
    )
    op.create_table(
        "device_orders",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("sku", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Numeric(14, 2), nullable=False),
        sa.Column("ordered_on", sa.Date, nullable=False),
        sa.Column("invoice_cycle_start", sa.Date, nullable=True),
    )
    op.create_table(
        "invoices",
        sa.Column("invoice_id", sa.Uuid, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("cycle_start", sa.Date, nullable=False),
        sa.Column("cycle_end", sa.Date, nullable=False),
        sa.Column("issued_on", sa.Date, nullable=False),
        sa.Column("due_on", sa.Date, nullable=False),
        sa.Column("total", sa.Numeric(16, 2), nullable=False),
        sa.UniqueConstraint("account_id", "cycle_start", name="one_invoice_per_account_and_cycle"),
    )
    op.create_table(
        "invoice_lines",
        sa.Column("invoice_id", sa.Uuid, primary_key=True),
        sa.Column("line_no", sa.Integer, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("product", sa.Text, nullable=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Numeric(14, 2), nullable=True),
        sa.Column("amount", sa.Numeric(16, 2), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("period_end", sa.Date, nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
    )
