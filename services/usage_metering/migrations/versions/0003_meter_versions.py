"""Usage metering: a version on each meter, so a batch of calls can write its meters without
locking them first and still never overwrite a concurrent change (it retries instead).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("meters", sa.Column("version", sa.Integer, nullable=False, server_default="0"))
    # Meters are updated far more often than inserted: leave room on each page for in-place updates.
    op.execute("alter table meters set (fillfactor = 70)")
