"""Cycle close's first schema: runtime tables, billing accounts, close requests, devices, invoices.

Revision ID: 0001
"""

from alembic import op

from services.cycle_close import storage
from shared.runtime.tables import create_runtime_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_runtime_tables(op)
    # The first revision creates the tables as storage.py defines them now, so a new database is
    # current after it; later revisions bring older databases there and must tolerate a new one
    # (e.g. ``drop column if exists``).
    storage.metadata.create_all(op.get_bind())
