"""Usage metering: the comment on ``seals.event`` that the shared seal table declares.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.alter_column(
        "seals",
        "event",
        existing_type=sa.LargeBinary,
        existing_nullable=False,
        comment="the seal event sent, sent again on a repeat",
    )


def downgrade() -> None:
    op.alter_column("seals", "event", existing_type=sa.LargeBinary, existing_nullable=False, comment=None)
