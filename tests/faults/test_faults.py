"""Fault scenarios on the real stack: no charge is lost or counted twice.

Each scenario sends a known workload (``workload.py``), injects a fault, waits for the system
to settle, and checks the books against the reference model, then closes the cycle and checks
the invoices. ``FAULTS_SCALE`` multiplies the number of accounts (CI runs scale 1).
Run only these: ``scripts/test -m faults`` (``FAULTS_SCALE=10 scripts/test -m faults`` for the long run).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest

from contracts import messages as m
from tests.conftest import SERVICES, Workers
from tests.faults.workload import Workload, raw_duplicates
from tests.support import ADMIN, SCHEDULER, SUPPORT, Bus, message, new_account, scalar, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[2]
SCALE = int(os.environ.get("FAULTS_SCALE", "1"))
OUTPUTS = ("licensing.events", "metering.alerts", "metering.usage", "billing.invoices", "billing.cycles")


def stack_command(*args: str) -> None:
    # A busy machine (other suites on the same 2 cores) can take more than stack.sh's 60 s to start the broker.
    env = {"KAFKA_START_TIMEOUT": "150", "PG_START_TIMEOUT": "150", **os.environ}
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "stack.sh"), *args], check=True, capture_output=True, timeout=240, env=env
    )


def kafka_pid() -> int:
    return int((ROOT / ".stack" / "kafka" / "broker.pid").read_text())


async def exited(proc: subprocess.Popen[bytes], timeout: float = 90) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while proc.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the worker did not crash at its crash point")
        await asyncio.sleep(0.1)
    return proc.returncode


async def readyz(workers: Workers, name: str) -> tuple[int, str]:
    async with httpx2.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{workers.metrics_ports[name]}/readyz")
    return response.status_code, response.text


async def not_ready_because(workers: Workers, name: str, reason: str) -> str | None:
    status, body = await readyz(workers, name)
    return body if status == 503 and reason in body else None


async def ready_again(workers: Workers, name: str) -> bool:
    return (await readyz(workers, name))[0] == 200


async def settle_and_check(workload: Workload, bus: Bus, dbs) -> None:
    await workload.settled(bus, dbs)
    assert await workload.check_books(bus, dbs) == []
    assert await workload.close_and_check_invoices(bus, dbs) == []


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
@pytest.mark.parametrize("service", SERVICES)
async def test_a_worker_dying_around_its_database_commit_loses_and_doubles_nothing(
    stack: Bus, dbs, workers: Workers, service: str, point: str
) -> None:
    workers.stop(service)
    crashing = workers.start(
        service,
        name=f"{service}-crashing",
        BILLING_BATCH_MAX_RECORDS="10",
        **{f"BILLING_FAULT_CRASH_{point.upper()}": "3"},
    )
    workload = Workload.build(8 * SCALE, f"crash-{point}")
    await workload.open_accounts(stack, dbs)
    await workload.send(stack)

    assert await exited(crashing) == 137  # died like SIGKILL in its third batch
    workers.procs.pop(f"{service}-crashing")
    workers.start(service)
    await settle_and_check(workload, stack, dbs)


@pytest.mark.parametrize("service", SERVICES)
async def test_sigkill_of_a_worker_mid_stream_then_restart_ends_with_exact_books(
    stack: Bus, dbs, workers: Workers, service: str
) -> None:
    workload = Workload.build(10 * SCALE, f"kill-{service}")
    await workload.open_accounts(stack, dbs)
    items = workload.stream()
    half = len(items) // 2
    await workload.send(stack, items[:half])
    await asyncio.sleep(0.3)  # let it get busy
    workers.stop(service, signal.SIGKILL)
    await workload.send(stack, items[half:])
    workers.start(service)
    await settle_and_check(workload, stack, dbs)


async def test_the_broker_stopped_and_restarted_mid_stream_loses_nothing(stack: Bus, dbs, workers: Workers) -> None:
    workload = Workload.build(10 * SCALE, "broker-restart")
    await workload.open_accounts(stack, dbs)
    items = workload.stream()
    half = len(items) // 2
    await workload.send(stack, items[:half])
    stack_command("kafka-stop")
    try:
        body = await wait_until(
            lambda: not_ready_because(workers, "license_orders", "kafka: "), timeout=30, what="readiness to say Kafka"
        )
        assert "is not in group license-orders" in body
    finally:
        stack_command("kafka-start")
    await workload.send(stack, items[half:])
    await settle_and_check(workload, stack, dbs)
    await wait_until(lambda: ready_again(workers, "license_orders"), timeout=60, what="license orders ready again")


async def test_postgresql_restarted_mid_stream_leaves_no_partial_transaction(stack: Bus, dbs) -> None:
    workload = Workload.build(10 * SCALE, "pg-restart")
    await workload.open_accounts(stack, dbs)
    await workload.send(stack)
    stack_command("pg-stop")
    await asyncio.sleep(3)
    stack_command("pg-start")
    await settle_and_check(workload, stack, dbs)


async def test_readiness_says_the_database_is_away_while_postgresql_is_stopped_and_ready_once_back(
    stack: Bus, workers: Workers
) -> None:
    assert await readyz(workers, "usage_metering") == (200, "ready\n")
    stack_command("pg-stop")
    try:
        body = await wait_until(
            lambda: not_ready_because(workers, "usage_metering", "database: "), timeout=30, what="not ready: database"
        )
        async with httpx2.AsyncClient(timeout=10) as client:  # alive all the same: no restart wanted
            port = workers.metrics_ports["usage_metering"]
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    finally:
        stack_command("pg-start")
    assert body.startswith("not ready\n- database: ")
    await wait_until(lambda: ready_again(workers, "usage_metering"), timeout=60, what="usage metering ready again")


async def test_a_paused_consumer_resumed_after_a_replica_took_over_applies_nothing_twice(
    stack: Bus, dbs, workers: Workers
) -> None:
    second = workers.start("license_orders", name="license_orders-b")
    await asyncio.sleep(5)  # the group rebalances over both replicas
    workload = Workload.build(12 * SCALE, "paused")
    await workload.open_accounts(stack, dbs)
    items = workload.stream()
    half = len(items) // 2
    await workload.send(stack, items[:half])
    original = workers.procs["license_orders"]
    original.send_signal(signal.SIGSTOP)
    try:
        await workload.send(stack, items[half:])
        await asyncio.sleep(14)  # past the 10 s session timeout: the other replica takes its partitions
    finally:
        original.send_signal(signal.SIGCONT)
    await settle_and_check(workload, stack, dbs)
    workers.stop("license_orders-b")
    assert second.returncode is not None


async def test_a_duplicate_storm_has_the_effect_of_each_message_once(stack: Bus, dbs) -> None:
    workload = Workload.build(10 * SCALE, "storm")
    await workload.open_accounts(stack, dbs)
    rng = random.Random(3)
    storm: list = []
    for topic, item in workload.stream():
        storm.append((topic, item))
    for index in range(len(storm) - 1, -1, -1):  # each message 1 to 3 times, copies anywhere after the first
        for _ in range(rng.randint(0, 2)):
            storm.insert(rng.randint(index + 1, len(storm)), storm[index])
    await workload.send(stack, storm)
    await settle_and_check(workload, stack, dbs)
    assert raw_duplicates(stack, OUTPUTS, workload.accounts) == 0


async def test_calls_out_of_order_across_a_cycle_boundary_land_on_exactly_one_invoice(stack: Bus, dbs) -> None:
    account = new_account()
    await stack.send("platform.accounts", message(m.AccountOpened, account, date(2026, 11, 1), billing_day=1))
    november = [
        message(m.CallCharged, account, date(2026, 11, 30), call_id=f"n{i}", cost=Decimal("1.111111")) for i in range(6)
    ]
    december = [
        message(m.CallCharged, account, date(2026, 12, 1), call_id=f"d{i}", cost=Decimal("2.000001")) for i in range(6)
    ]
    mixed = [c for pair in zip(december, november, strict=True) for c in pair]
    for call in mixed[:7]:
        await stack.send("usage.calls", call)
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) = 7 from calls where account_id = :a", a=account)
    )
    close = message(
        m.CloseBillingCycles,
        "platform",
        date(2026, 12, 1),
        actor=SCHEDULER,
        as_of=date(2026, 12, 1),
        account_ids=[account],
    )
    await stack.send("billing.commands", close)
    [nov_invoice] = await stack.wait_count(
        "billing.invoices", 1, timeout=60, account_id=account, cycle_start="2026-11-01"
    )
    for call in reversed(mixed[7:]):  # the rest arrive late and out of order
        await stack.send("usage.calls", call)
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) = 12 from calls where account_id = :a", a=account)
    )
    close2 = message(
        m.CloseBillingCycles,
        "platform",
        date(2027, 1, 1),
        actor=SCHEDULER,
        as_of=date(2027, 1, 1),
        account_ids=[account],
    )
    await stack.send("billing.commands", close2)
    [dec_invoice] = await stack.wait_count(
        "billing.invoices", 1, timeout=60, account_id=account, cycle_start="2026-12-01"
    )

    def credits(invoice: dict) -> Decimal:
        return sum(
            (Decimal(line["amount"]) for line in invoice["lines"] if line["kind"] == "calling_credits"), Decimal("0")
        )

    nov_sent_before = sum(1 for c in mixed[:7] if c.call_id.startswith("n"))
    assert credits(nov_invoice) == (Decimal("1.111111") * nov_sent_before).quantize(Decimal("0.01"))
    late = [line for line in dec_invoice["lines"] if line["late"]]
    assert [line["period_start"] for line in late] == ["2026-11-01"]
    total_calls = Decimal("1.111111") * 6 + Decimal("2.000001") * 6
    assert abs(credits(nov_invoice) + credits(dec_invoice) - total_calls) <= Decimal("0.02")  # rounding per line


async def test_poison_on_every_input_topic_is_dead_lettered_or_rejected_and_later_messages_pass(
    stack: Bus, dbs
) -> None:
    account = new_account()
    unknown = new_account()
    poison = {
        "platform.accounts": [
            b"\xff\xfe",
            b'{"message_id": 5}',
            message(m.AccountOpened, account, date(2026, 11, 1), billing_day=1)
            .model_dump_json()
            .replace('"billing_day":1', '"billing_day":32')
            .encode(),
        ],
        "licensing.commands": [b"[]", b"x" * 900_000],
        "usage.calls": [
            b"null",
            message(m.CallCharged, account, date(2026, 11, 2), call_id="neg", cost=Decimal("1"))
            .model_dump_json()
            .replace('"cost":"1"', '"cost":"-1"')
            .encode(),
        ],
        "metering.commands": [b"{"],
        "billing.charges": [
            b"\x00",
            message(
                m.DevicePurchased,
                account,
                date(2026, 11, 2),
                order_id="o",
                sku="s",
                description="d",
                quantity=1,
                unit_price=Decimal("1"),
            )
            .model_dump_json()
            .replace('"order_id":"o"', '"order_id":""')
            .encode(),
        ],
        "billing.commands": [b"1.5"],
    }
    for topic, values in poison.items():
        for value in values:
            await stack.send(topic, value, key=account)
    rejected_cmd = message(m.PurchaseLicenses, unknown, date(2026, 11, 2), actor=ADMIN, product="user", quantity=1)
    await stack.send("licensing.commands", rejected_cmd)
    wrong_type = (
        message(m.SetCallingCreditCap, account, date(2026, 11, 2), actor=SUPPORT, cap=Decimal("1"))
        .model_dump_json()
        .replace('"cap":"1"', '"cap":true')
    )
    wrong_type_id = json.loads(wrong_type)["message_id"]
    await stack.send("metering.commands", wrong_type.encode(), key=account)

    workload = Workload.build(3, "after-poison")
    await workload.open_accounts(stack, dbs)
    await workload.send(stack)
    await settle_and_check(workload, stack, dbs)
    readers = {"platform.accounts": 3}  # each consumer group dead-letters on its own
    for topic, values in poison.items():
        expected = len(values) * readers.get(topic, 1)
        letters = await stack.wait_count(f"{topic}.dlq", expected, timeout=60, key=account)
        assert len(letters) == expected, topic
        assert all(letter["consumer"] for letter in letters)
    [rejection] = await stack.wait_count("licensing.events", 1, causation_id=str(rejected_cmd.message_id))
    assert rejection["reason_code"] == "unknown_account"
    [invalid] = await stack.wait_count("metering.alerts", 1, causation_id=wrong_type_id)
    assert invalid["type"] == "CommandRejected" and invalid["reason_code"] == "invalid_cap"
    huge = next(
        json.loads(json.dumps(x))
        for x in stack.matching("licensing.commands.dlq", key=account)
        if x["value_text"] and len(x["value_text"]) > 100_000
    )
    assert huge["error"]


async def test_a_cycle_close_worker_killed_halfway_through_a_big_batch_finishes_with_one_invoice_each(
    stack: Bus, dbs, workers: Workers
) -> None:
    workload = Workload.build(60 * SCALE, "close-kill", invites=2, calls_per_account=2)
    await workload.open_accounts(stack, dbs)
    await workload.send(stack)
    await workload.settled(stack, dbs)
    close = message(
        m.CloseBillingCycles,
        "platform",
        date(2026, 12, 1),
        actor=SCHEDULER,
        as_of=date(2026, 12, 1),
        account_ids=workload.accounts,
    )
    await stack.send("billing.commands", close)
    await stack.wait_for(
        lambda: (
            len({i["account_id"] for i in stack.matching("billing.invoices") if i["account_id"] in workload.accounts})
            >= 5
        ),
        timeout=60,
    )
    workers.stop("cycle_close", signal.SIGKILL)
    workers.start("cycle_close")
    for account in workload.accounts:
        await stack.wait_count("billing.invoices", 1, timeout=120, account_id=account, cycle_start="2026-11-01")
    stored = await scalar(
        dbs["cycle_close"], "select count(*) from invoices where account_id = any(:a)", a=workload.accounts
    )
    assert stored == len(workload.accounts)
    for account in workload.accounts:
        ids = {i["invoice_id"] for i in stack.matching("billing.invoices", account_id=account)}
        assert len(ids) == 1
        [invoice] = [i for i in stack.matching("billing.invoices", account_id=account)][:1]
        assert Decimal(invoice["total"]) == workload.expected_invoice_total(account)


async def test_the_broker_frozen_for_some_seconds_mid_stream_loses_nothing(stack: Bus, dbs) -> None:
    """A silent network cut as every client sees it: connections stay open, nothing answers."""
    workload = Workload.build(10 * SCALE, "frozen")
    await workload.open_accounts(stack, dbs)
    items = workload.stream()
    half = len(items) // 2
    await workload.send(stack, items[:half])
    pid = kafka_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(8)
    finally:
        os.kill(pid, signal.SIGCONT)
    await workload.send(stack, items[half:])
    await settle_and_check(workload, stack, dbs)
    _ = uuid


async def test_a_cut_of_the_brokers_port_for_some_seconds_loses_nothing(stack: Bus, dbs, workers: Workers) -> None:
    """License orders reaches Kafka only through a TCP proxy; the port is cut for 8 s mid-stream."""
    from tests.faults.proxy import KafkaPortProxy
    from tests.support import BOOTSTRAP

    kafka_port = int(BOOTSTRAP.rsplit(":", 1)[1])
    proxy = KafkaPortProxy(listen_port=kafka_port + 3, broker_port=kafka_port + 2)
    await proxy.start()
    workers.stop("license_orders")
    workers.start(
        "license_orders", name="license_orders-proxied", BILLING_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port + 3}"
    )
    try:
        workload = Workload.build(10 * SCALE, "port-cut")
        await workload.open_accounts(stack, dbs)
        items = workload.stream()
        half = len(items) // 2
        await workload.send(stack, items[:half])
        await asyncio.sleep(0.5)
        await proxy.cut()
        await workload.send(stack, items[half:])  # the producers here are not behind the proxy
        await asyncio.sleep(8)
        await proxy.restore()
        await settle_and_check(workload, stack, dbs)
        assert proxy.accepted > 1  # the worker really reconnected through the proxy
    finally:
        workers.stop("license_orders-proxied")
        workers.start("license_orders")
        await proxy.stop()
