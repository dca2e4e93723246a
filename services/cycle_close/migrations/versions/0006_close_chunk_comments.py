"""Cycle close: the comments on ``close_chunks`` that the model declares.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

COMMENTS = {
    "message_id": (sa.Uuid, "a trigger or one of its continuations"),
    "trigger_id": (sa.Uuid, "the trigger that started the chain"),
    "finished": (sa.Boolean, "processed, and no account was left due"),
}


def upgrade() -> None:
    for column, (type_, comment) in COMMENTS.items():
        op.alter_column("close_chunks", column, existing_type=type_, existing_nullable=False, comment=comment)


def downgrade() -> None:
    for column, (type_, _) in COMMENTS.items():
        op.alter_column("close_chunks", column, existing_type=type_, existing_nullable=False, comment=None)
