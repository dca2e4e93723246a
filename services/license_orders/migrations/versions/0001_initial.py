"""License orders' first schema: runtime tables, accounts, balances, purchases, removals, prices.

A frozen snapshot of the first release: later changes are later revisions.

Revision ID: 0001
"""

from decimal import Decimal

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

# The catalog operations start from; they change it with `python -m services.license_orders prices`.
DEFAULT_PRICES = {"user": "15.00", "room_phone": "15.00", "shared_line": "20.00", "fax": "10.00"}


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
        sa.Column("open_cycle_start", sa.Date, nullable=False),
        sa.Column("open_cycle_end", sa.Date, nullable=False),
    )
    op.create_table(
        "balances",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("product", sa.Text, primary_key=True),
        sa.Column("purchased", sa.Integer, nullable=False),
        sa.Column("assigned", sa.Integer, nullable=False),
        sa.Column("scheduled_for_removal", sa.Integer, nullable=False),
        sa.CheckConstraint("0 <= assigned and assigned <= purchased - scheduled_for_removal", name="seats_invariant"),
    )
    op.create_table(
        "assignments",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("product", sa.Text, primary_key=True),
        sa.Column("assignee_id", sa.Text, primary_key=True),
    )
    op.create_table(
        "purchases",
        sa.Column("purchase_id", sa.Uuid, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("purchase_day", sa.Date, nullable=False),
        sa.Column("quantity_restored", sa.Integer, nullable=False),
        sa.Column("quantity_added", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
        sa.Column("command_id", sa.Uuid, nullable=False),
        sa.Index("purchases_by_account_day", "account_id", "purchase_day"),
    )
    op.create_table(
        "proration_charges",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("purchase_id", sa.Uuid, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("period_end", sa.Date, nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
        sa.Column("sealed_in", sa.Date, nullable=True, comment="start of the cycle whose invoice carries it"),
        sa.Index("proration_charges_unsealed", "account_id", postgresql_where=sa.text("sealed_in is null")),
    )
    op.create_table(
        "removals",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("effective_on", sa.Date, nullable=False),
        sa.Column("applied", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Index("removals_pending", "account_id", postgresql_where=sa.text("not applied")),
    )
    prices = op.create_table(
        "prices",
        sa.Column("product", sa.Text, primary_key=True),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
    )
    op.create_table(
        "account_prices",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("product", sa.Text, primary_key=True),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
    )
    op.create_table(
        "sealed_cycles",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("cycle_start", sa.Date, primary_key=True),
        sa.Column("event", sa.LargeBinary, nullable=False, comment="the LicenseCycleSealed sent, re-sent on a repeat"),
    )
    op.bulk_insert(
        prices, [{"product": product, "unit_price": Decimal(price)} for product, price in DEFAULT_PRICES.items()]
    )
