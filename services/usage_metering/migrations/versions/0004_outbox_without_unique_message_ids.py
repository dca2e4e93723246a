"""Usage metering: no unique index on the outbox's message ids.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from shared.runtime.tables import outbox_without_unique_message_ids

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    outbox_without_unique_message_ids(op)


def downgrade() -> None:
    op.execute("alter table outbox add constraint outbox_message_id_key unique (message_id)")
