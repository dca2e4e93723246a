"""Usage metering's meters in memory, on the real stack: whatever happens to a worker between a
batch's commit and the next snapshot of its meters, or to the ownership of a partition mid-stream,
the meters end exact and each threshold alerts once (``docs/architecture.md``, usage metering)."""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal
from typing import Any

import pytest

from services.usage_metering import domain
from tests.conftest import Workers
from tests.faults.test_faults import exited, ready_again
from tests.faults.workload import CAP, NOV_1, Workload
from tests.support import Bus, scalar, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.faults]
ALERTS = "metering.alerts"
KINDS = {"CallingCreditThresholdReached": "threshold", "CallingBlocked": "blocked"}
# No snapshot by time or batch count: every meter is rebuilt from the ledger by the next owner.
NO_SNAPSHOTS = {"BILLING_METER_SNAPSHOT_INTERVAL_S": "3600", "BILLING_METER_SNAPSHOT_BATCHES": "0"}


def expected_alerts(workload: Workload, account: str) -> list[tuple[str, int, Decimal]]:
    """The thresholds and the block the account's calls reach, each once, with the accrual at the
    call that reached it (calls in the order sent; a repeat report charges nothing)."""
    seen: set[str] = set()
    costs = []
    for call in workload.calls:
        if call.account_id == account and call.call_id not in seen:
            seen.add(call.call_id)
            costs.append(call.cost)
    meter, alerts = domain.Meter(cap=CAP), []
    for cost in costs:
        meter, raised = domain.accrue(meter, cost)
        alerts += raised
    return sorted((a.kind, a.threshold_percent or 0, a.billable) for a in alerts)


def alerts_sent(bus: Bus, account: str) -> list[tuple[str, int, Decimal]]:
    distinct = {a["message_id"]: a for a in bus.matching(ALERTS, account_id=account) if a["type"] in KINDS}
    return sorted((KINDS[a["type"]], a.get("threshold_percent") or 0, Decimal(a["accrued"])) for a in distinct.values())


async def check_alerts(workload: Workload, bus: Bus) -> None:
    for account in workload.accounts:
        want = expected_alerts(workload, account)

        async def all_sent(account: str = account, count: int = len(want)) -> bool:
            return len(alerts_sent(bus, account)) >= count

        await wait_until(all_sent, what=f"{account}'s alerts")
        assert alerts_sent(bus, account) == want, account


async def meters_behind_their_snapshots(dbs: Any, workload: Workload) -> int:
    return await scalar(
        dbs["usage_metering"],
        "select count(*) from meters where account_id = any(:a) and cycle_start = :d and through_seq > snapshot_seq",
        a=workload.accounts,
        d=NOV_1,
    )


async def test_a_worker_killed_between_a_batch_commit_and_the_next_snapshot_loses_and_doubles_nothing(
    stack: Bus, dbs, workers: Workers
) -> None:
    workload = Workload.build(8, "snapless")
    await workload.open_accounts(stack, dbs)
    await wait_until(
        lambda: scalar(
            dbs["usage_metering"],
            "select count(*) = :n from accounts where account_id = any(:a)",
            n=len(workload.accounts),
            a=workload.accounts,
        ),
        what="usage metering to know the accounts",
    )
    workers.stop("usage_metering")
    crashing = workers.start(
        "usage_metering",
        name="usage_metering-crashing",
        BILLING_BATCH_MAX_RECORDS="10",
        BILLING_FAULT_CRASH_AFTER_COMMIT="5",
        **NO_SNAPSHOTS,
    )
    await workload.send(stack)

    assert await exited(crashing) == 137  # died like SIGKILL just after its fifth batch of calls committed
    workers.procs.pop("usage_metering-crashing")
    assert await meters_behind_their_snapshots(dbs, workload) > 0  # their calls are only in the ledger
    workers.start("usage_metering", **NO_SNAPSHOTS)
    try:
        await workload.settled(stack, dbs)
        assert await workload.check_books(stack, dbs) == []
        await check_alerts(workload, stack)
    finally:
        workers.stop("usage_metering")
        workers.start("usage_metering")
    assert await workload.close_and_check_invoices(stack, dbs) == []


@pytest.mark.parametrize("handover", ["clean", "paused-owner"])
async def test_a_partition_that_moves_to_another_replica_mid_stream_ends_with_exact_meters(
    stack: Bus, dbs, workers: Workers, handover: str
) -> None:
    """A second replica joins mid-stream and takes some of usage.calls' partitions from the first,
    whose memory of them is then dropped; then it leaves and they move back. ``paused-owner``: the
    first replica is frozen past its session timeout while the second takes over all of them, and
    resumes with the batch it had in flight: two owners of a partition at once."""
    workload = Workload.build(12, f"moved-{handover}")
    await workload.open_accounts(stack, dbs)
    items = workload.stream()
    third = len(items) // 3
    await workload.send(stack, items[:third])
    second = workers.start("usage_metering", name="usage_metering-b")
    await wait_until(lambda: ready_again(workers, "usage_metering-b"), timeout=90, what="the second replica ready")
    if handover == "paused-owner":
        first = workers.procs["usage_metering"]
        first.send_signal(signal.SIGSTOP)
        try:
            await workload.send(stack, items[third : 2 * third])
            await asyncio.sleep(14)  # past the 10 s session timeout: the second replica takes its partitions
        finally:
            first.send_signal(signal.SIGCONT)
    else:
        await workload.send(stack, items[third : 2 * third])
    workers.stop("usage_metering-b")  # its partitions move back to the first replica
    await workload.send(stack, items[2 * third :])

    await workload.settled(stack, dbs)
    assert await workload.check_books(stack, dbs) == []
    await check_alerts(workload, stack)
    assert second.returncode is not None
    assert await workload.close_and_check_invoices(stack, dbs) == []
