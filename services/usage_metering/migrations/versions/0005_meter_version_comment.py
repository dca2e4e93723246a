"""Usage metering: the comment on ``meters.version`` that the model declares.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.alter_column(
        "meters", "version", existing_type=sa.Integer, existing_nullable=False, comment="bumped by every write"
    )


def downgrade() -> None:
    op.alter_column("meters", "version", existing_type=sa.Integer, existing_nullable=False, comment=None)
