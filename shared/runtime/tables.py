"""The runtime's own tables, present in every service's database.

- ``inbox``: one row per processed ``message_id``; a duplicate key means "already done".
- ``outbox``: events committed with the state change, relayed to Kafka afterwards, then deleted.
  ``message_id`` is not unique here: an event written twice (a seal answered again) is published
  twice, which at-least-once delivery allows anyway, and consumers deduplicate on it.
- ``parked``: events for an account not opened yet, handed back when its ``AccountOpened`` arrives.
- ``dead_letters``: unreadable or invalid input, unique per (topic, partition, offset), so a
  redelivered poison message yields one ``.dlq`` record.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

# Every transaction that writes outbox rows notifies this channel (NOTIFY is per database, and each
# service has its own): the relay leader listens, so it wakes whichever replica committed.
OUTBOX_CHANNEL = "outbox"


def create_runtime_tables(op: Any) -> None:
    """Create the tables with alembic's ``op`` (the module proxy of ``Operations``)."""
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.Uuid, primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", sa.Uuid, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("topic", "partition", "offset", name="dead_letters_source_key"),
    )
    op.create_table(
        "parked",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False, index=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )


def key_dead_letters_by_record_time(op: Any) -> None:
    """Revision 0002 of every service: a dead letter is one record by topic, partition, offset
    *and* record timestamp, so a recreated topic (offsets from 0 again) is not taken for a
    redelivery of records dead-lettered before."""
    op.add_column("dead_letters", sa.Column("record_timestamp", sa.BigInteger, nullable=False, server_default="0"))
    op.drop_constraint("dead_letters_source_key", "dead_letters", type_="unique")
    op.create_unique_constraint(
        "dead_letters_source_key", "dead_letters", ["topic", "partition", "offset", "record_timestamp"]
    )


def outbox_without_unique_message_ids(op: Any) -> None:
    """A revision of every service (license orders 0003, usage metering 0004, cycle close 0005): no unique index on ``outbox.message_id``.

    Keeping it cost a random-key B-tree insert per event (about 40 % of the outbox insert, the
    largest statement of a cycle close) to drop the rare event a handler writes a second time
    while the first is still waiting to be relayed. Consumers deduplicate on ``message_id``, as
    they must after any relay crash, so a second copy changes nothing.
    """
    op.execute("alter table outbox drop constraint if exists outbox_message_id_key")
