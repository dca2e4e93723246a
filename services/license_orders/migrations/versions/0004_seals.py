"""License orders: the seals sent are kept in ``seals``, the name usage metering gives them too.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.rename_table("sealed_cycles", "seals")
    op.execute("alter index sealed_cycles_pkey rename to seals_pkey")
    op.alter_column(
        "seals",
        "event",
        existing_type=sa.LargeBinary,
        existing_nullable=False,
        comment="the seal event sent, sent again on a repeat",
    )


def downgrade() -> None:
    op.alter_column(
        "seals",
        "event",
        existing_type=sa.LargeBinary,
        existing_nullable=False,
        comment="the LicenseCycleSealed sent, re-sent on a repeat",
    )
    op.execute("alter index seals_pkey rename to sealed_cycles_pkey")
    op.rename_table("seals", "sealed_cycles")
