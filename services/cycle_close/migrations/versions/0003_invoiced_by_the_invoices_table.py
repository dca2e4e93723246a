"""Cycle close: a close is invoiced when its invoice exists; no third update of the close row.

``cycle_closes.invoice_id`` repeated what ``invoices`` (unique per account and cycle) already says,
and setting it rewrote every close row, reports included, once more.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.drop_column("cycle_closes", "invoice_id")


def downgrade() -> None:
    op.add_column("cycle_closes", sa.Column("invoice_id", sa.Uuid, nullable=True))
    op.execute(
        "update cycle_closes c set invoice_id = i.invoice_id from invoices i "
        "where i.account_id = c.account_id and i.cycle_start = c.cycle_start"
    )
