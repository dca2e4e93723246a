"""Usage metering: the inbox partitioned by week, so processed ids older than the retention are dropped
a week at a time (a partition detached and dropped) instead of deleted row by row.

The primary key is (message_id, bucket): a partitioned table's unique key must hold its partition
key. What keeps one message processed once is the claim statement (``shared/runtime/retention.py``):
it looks for the id in every partition, and in the first hour of a week it claims it in the week
before as well, where a claim still in flight from that week conflicts.
Ids already processed go to this week's partition (kept the full retention from now on).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.execute("alter table inbox rename to inbox_unpartitioned")
    op.execute("alter table inbox_unpartitioned rename constraint inbox_pkey to inbox_unpartitioned_pkey")
    op.execute(
        "create table inbox (message_id uuid not null, topic text not null, "
        "processed_at timestamp with time zone not null default now(), "
        "bucket date not null, constraint inbox_pkey primary key (message_id, bucket)) partition by range (bucket)"
    )
    op.execute("comment on column inbox.bucket is 'the UTC week (its Monday) the message was claimed in'")
    # This week's partition and the next two; the workers keep creating those ahead.
    op.execute(
        "do $$ declare monday date := date_trunc('week', now() at time zone 'utc')::date; "
        "begin for week in 0..2 loop execute format("
        "'create table %I partition of inbox for values from (%L) to (%L)', "
        "'inbox_' || to_char(monday + 7 * week, 'YYYYMMDD'), monday + 7 * week, monday + 7 * (week + 1)); "
        "end loop; end $$"
    )
    op.execute(
        "insert into inbox (message_id, topic, processed_at, bucket) select message_id, topic, processed_at, "
        "date_trunc('week', now() at time zone 'utc')::date from inbox_unpartitioned"
    )
    op.execute("drop table inbox_unpartitioned")


def downgrade() -> None:
    op.execute("alter table inbox rename to inbox_partitioned")
    op.execute(
        "create table inbox (message_id uuid primary key, topic text not null, "
        "processed_at timestamp with time zone not null default now())"
    )
    op.execute(
        "insert into inbox select message_id, min(topic), min(processed_at) from inbox_partitioned group by message_id"
    )
    op.execute("drop table inbox_partitioned")
