"""Usage metering: dead letters keyed by topic, partition, offset and record timestamp, so a recreated topic
(offsets from 0 again) is not taken for a redelivery of records dead-lettered before.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("record_timestamp", sa.BigInteger, nullable=False, server_default="0"))
    op.drop_constraint("dead_letters_source_key", "dead_letters", type_="unique")
    op.create_unique_constraint(
        "dead_letters_source_key", "dead_letters", ["topic", "partition", "offset", "record_timestamp"]
    )
