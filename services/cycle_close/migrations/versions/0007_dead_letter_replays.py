"""Cycle close: a record of every dead letter re-driven (``billing dlq replay``): when, by whom,
whether its value was fixed by hand, and where the re-driven record landed.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
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


def downgrade() -> None:
    op.drop_table("dead_letter_replays")
