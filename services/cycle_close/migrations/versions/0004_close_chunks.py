"""Cycle close: a trigger closes its accounts in chunks; each chunk knows its trigger.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    # A database created from scratch has the table already: 0001 creates the tables from storage.py.
    op.execute(
        "create table if not exists close_chunks (message_id uuid primary key, trigger_id uuid not null, "
        "finished boolean not null)"
    )
    op.execute("create index if not exists close_chunks_by_trigger on close_chunks (trigger_id)")


def downgrade() -> None:
    op.execute("drop table if exists close_chunks")
