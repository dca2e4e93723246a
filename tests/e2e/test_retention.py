"""Bounded stores on the running services: the inbox drops ids past the retention a week's partition
at a time, while the consumers go on, and an id inside the window still stops a second effect."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from contracts import messages as m
from shared.runtime.retention import Retention, add_week, monday, partition_name
from tests import support
from tests.support import ADMIN, SERVICE, Bus, message, scalar

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]
DSN = support.dsn("license_orders")
STREAM = 200  # commands, one every 25 ms: about 5 s of stream


async def replies_over_time(bus: Bus, account: str, until: asyncio.Event) -> list[tuple[float, int]]:
    """(time, replies so far) for the account, sampled every 10 ms until ``until`` is set."""
    samples: list[tuple[float, int]] = []
    while not until.is_set():
        samples.append((time.monotonic(), len(bus.matching("licensing.events", account_id=account))))
        await asyncio.sleep(0.01)
    return samples


def longest_wait(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """The longest time within [start, end] during which no reply came."""
    changes = [t for (_, before), (t, n) in itertools.pairwise(samples) if n != before and start <= t <= end]
    return max(b - a for a, b in itertools.pairwise([start, *changes, end]))


async def test_the_prune_drops_ids_past_the_retention_during_a_stream_and_a_redelivery_inside_it_has_no_effect(
    stack: Bus, dbs
) -> None:
    account = await support.open_account(stack)
    bought = message(m.PurchaseLicenses, account, date(2026, 11, 10), actor=ADMIN, product="user", quantity=1)
    await stack.send("licensing.commands", bought)
    await stack.wait_count("licensing.events", 1, causation_id=str(bought.message_id))

    # Ids claimed ten weeks ago, in the partition the workers would have made for that week.
    old_week = monday(datetime.now(UTC).date()) - timedelta(weeks=10)
    old_ids = [uuid.uuid4() for _ in range(2000)]
    conn = await asyncpg.connect(DSN)
    try:
        await add_week(conn, old_week)
        await conn.execute(
            "insert into inbox (message_id, topic, processed_at, bucket) select id, 'licensing.commands', $2, $3 "
            "from unnest($1::uuid[]) id",
            old_ids,
            datetime.combine(old_week, datetime.min.time(), UTC),
            old_week,
        )
    finally:
        await conn.close()

    streamed = await support.open_account(stack)
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(replies_over_time(stack, streamed, stop_sampling))

    async def stream() -> None:
        started = time.monotonic()
        for n in range(STREAM):
            await asyncio.sleep(max(0.0, started + n * 0.025 - time.monotonic()))
            await stack.send(
                "licensing.commands",
                message(
                    m.PreviewLicensePurchase, streamed, date(2026, 11, 10), actor=ADMIN, product="user", quantity=1
                ),
            )

    streaming = asyncio.create_task(stream())
    await asyncio.sleep(1.5)  # the stream is under way
    retention = Retention(
        "license_orders", DSN, inbox_retention_days=30, dead_letter_retention_days=90, interval_s=3600
    )
    pruned = None
    prune_started = time.monotonic()
    while pruned is None:  # None: a worker held the maintenance lock at that moment
        pruned = await retention.run_once()
    prune_ended = time.monotonic()
    await streaming
    await stack.wait_count("licensing.events", STREAM, timeout=60, account_id=streamed)
    stop_sampling.set()
    samples = await sampler

    assert partition_name(old_week) in pruned.dropped
    assert await scalar(dbs["license_orders"], "select count(*) from inbox where message_id = any(:i)", i=old_ids) == 0
    assert await scalar(dbs["license_orders"], "select to_regclass(:t) is null", t=partition_name(old_week))
    # The consumers went on: during the prune, replies kept coming as before (every 25 ms a command).
    assert longest_wait(samples, prune_started, max(prune_ended, prune_started + 0.5)) < 2.0, (
        prune_started,
        prune_ended,
    )

    # A redelivery inside the window: no second purchase (the marker after it, on the same
    # partition, is answered only once the repeat has been handled).
    await stack.send("licensing.commands", bought)
    marker = message(m.AssignLicense, account, date(2026, 11, 11), actor=SERVICE, product="user", assignee_id="ann")
    await stack.send("licensing.commands", marker)
    [assigned] = await stack.wait_count("licensing.events", 1, causation_id=str(marker.message_id))
    assert assigned["balance"]["purchased"] == 1
    assert len(stack.matching("licensing.events", causation_id=str(bought.message_id))) == 1
