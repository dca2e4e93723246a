"""Usage metering's first schema: runtime tables, accounts, meters, calls, seals.

Revision ID: 0001
"""

from alembic import op

from services.usage_metering import storage
from shared.runtime.tables import create_runtime_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_runtime_tables(op)
    # The first revision creates the tables as storage.py defined them at the time;
    # every later change gets its own revision with explicit operations.
    storage.metadata.create_all(op.get_bind())
