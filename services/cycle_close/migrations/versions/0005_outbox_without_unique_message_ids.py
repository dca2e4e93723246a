"""Cycle close: no unique index on the outbox's message ids.

Keeping it cost a random-key B-tree insert per event (about 40 % of the outbox insert) to drop the
rare event a handler writes a second time while the first still waits to be relayed; consumers
deduplicate on ``message_id``, as they must after any relay crash, so a second copy changes nothing.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.drop_constraint("outbox_message_id_key", "outbox", type_="unique")


def downgrade() -> None:
    op.create_unique_constraint("outbox_message_id_key", "outbox", ["message_id"])
