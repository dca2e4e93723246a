"""Cycle close: a trigger closes its accounts in chunks; each chunk knows its trigger.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "close_chunks",
        sa.Column("message_id", sa.Uuid, primary_key=True),
        sa.Column("trigger_id", sa.Uuid, nullable=False),
        sa.Column("finished", sa.Boolean, nullable=False),
        sa.Index("close_chunks_by_trigger", "trigger_id"),
    )


def downgrade() -> None:
    op.drop_table("close_chunks")
