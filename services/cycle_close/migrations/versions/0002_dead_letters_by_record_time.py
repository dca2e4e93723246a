"""Cycle close: dead letters keyed by topic, partition, offset and record timestamp.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from shared.runtime.tables import key_dead_letters_by_record_time

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    key_dead_letters_by_record_time(op)
