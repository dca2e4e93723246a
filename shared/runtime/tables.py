"""The runtime's own tables, present in every service's database (each service's ``storage``
declares them on its metadata with ``declare_runtime_tables``; its migrations create them).

- ``inbox``: the processed ``message_id``s, partitioned by the week they were claimed in, kept for
  the inbox retention (``shared/runtime/retention.py`` claims, creates and drops the partitions).
- ``outbox``: events committed with the state change, relayed to Kafka afterwards, then deleted.
  ``message_id`` is not unique here: an event written twice (a seal answered again) is published
  twice, which at-least-once delivery allows anyway, and consumers deduplicate on it.
- ``parked``: events for an account not opened yet, handed back when its ``AccountOpened`` arrives.
- ``dead_letters``: unreadable or invalid input, unique per (topic, partition, offset, record
  timestamp), so a redelivered poison message yields one ``.dlq`` record and a recreated topic
  (offsets from 0 again) is not taken for a redelivery.
- ``dead_letter_replays``: each re-drive of a dead letter (``billing dlq replay``): when, by whom,
  whether fixed by hand, and where the re-driven record landed (so a dead letter that comes of a
  re-drive is known as such).
"""

from __future__ import annotations

import sqlalchemy as sa

# Every transaction that writes outbox rows notifies this channel (NOTIFY is per database, and each
# service has its own): the relay leader listens, so it wakes whichever replica committed.
OUTBOX_CHANNEL = "outbox"


def declare_runtime_tables(metadata: sa.MetaData) -> None:
    """Add the runtime's tables, as the migrations leave them, to a service's metadata."""
    sa.Table(
        "inbox",
        metadata,
        sa.Column("message_id", sa.Uuid, primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("bucket", sa.Date, primary_key=True, comment="the UTC week (its Monday) the message was claimed in"),
        postgresql_partition_by="RANGE (bucket)",  # a partition per week: see shared/runtime/retention.py
    )
    sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", sa.Uuid, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    sa.Table(
        "dead_letters",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("record_timestamp", sa.BigInteger, nullable=False, server_default="0"),
        sa.UniqueConstraint("topic", "partition", "offset", "record_timestamp", name="dead_letters_source_key"),
    )
    sa.Table(
        "dead_letter_replays",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "dead_letter_id", sa.BigInteger, sa.ForeignKey("dead_letters.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("replayed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("replayed_by", sa.Text, nullable=False),
        sa.Column("amended", sa.Boolean, nullable=False, comment="the value was replaced by hand"),
        sa.Column("to_partition", sa.Integer, nullable=False),
        sa.Column("to_offset", sa.BigInteger, nullable=False),
        sa.Index("dead_letter_replays_by_letter", "dead_letter_id"),
    )
    sa.Table(
        "parked",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False, index=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
