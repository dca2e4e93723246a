"""Every worker's /metrics, /healthz and /readyz, with real traffic through the real broker."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import support
from tests.conftest import SERVICES, Workers
from tests.e2e.test_usage_metering import accrued, call
from tests.support import Bus, wait_until

pytestmark = pytest.mark.stack
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    """/metrics parsed as the Prometheus text format (the parser raises on anything else)."""
    async with httpx2.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def lag(samples: Samples, topic: str) -> float:
    return sum(
        v for (name, labels), v in samples.items() if name == "billing_consumer_lag" and ("topic", topic) in labels
    )


async def test_every_worker_is_alive_and_ready_once_started(stack: Bus, workers: Workers) -> None:
    async with httpx2.AsyncClient(timeout=10) as client:
        for service in SERVICES:
            port = workers.metrics_ports[service]
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).text == "ok\n"

            async def ready(port: int = port) -> bool:
                answer = await client.get(f"http://127.0.0.1:{port}/readyz")
                return (answer.status_code, answer.text) == (200, "ready\n")

            # Alive at once, ready once its start-up is done (a worker started with this test session
            # may still be joining its consumer group when this test comes first).
            await wait_until(ready, timeout=60, what=f"{service}'s /readyz to answer 200 ready")
            samples = await scrape(port)
            assert value(samples, "billing_ready") == 1.0


async def test_ten_calls_and_one_garbage_record_move_the_counters_by_exactly_that(
    stack: Bus, workers: Workers, dbs
) -> None:
    port = workers.metrics_ports["usage_metering"]
    account = await support.open_account(stack)

    async def caught_up() -> Samples | None:  # earlier tests' calls all processed: a clean baseline
        samples = await scrape(port)
        return samples if lag(samples, "usage.calls") == 0 else None

    before: Samples = await wait_until(caught_up, what="usage metering to catch up with usage.calls")
    started = time.monotonic()
    for cost in ["1.10"] * 9 + ["2.05"]:
        await stack.send("usage.calls", call(account, cost))
    await stack.send("usage.calls", b"\x00 not a call", key=account)
    await wait_until(lambda: _equals(accrued(dbs, account), Decimal("11.95")), what="the ten calls to accrue")
    await stack.wait_count("usage.calls.dlq", 1, key=account)

    async def counted() -> Samples | None:
        samples = await scrape(port)
        handled = value(samples, "billing_messages_total", topic="usage.calls", outcome="handled")
        done = handled - value(before, "billing_messages_total", topic="usage.calls", outcome="handled") >= 10
        return samples if done and lag(samples, "usage.calls") == 0 else None

    after: Samples = await wait_until(counted, what="the counters to show the calls")

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("billing_messages_total", topic="usage.calls", outcome="handled") == 10
    assert moved("billing_messages_total", topic="usage.calls", outcome="dead_lettered") == 1
    assert moved("billing_messages_total", topic="usage.calls", outcome="duplicate") == 0
    assert moved("billing_calls_accrued_total") == 10
    assert moved("billing_calls_accrued_usd_total", part="billable") == pytest.approx(11.95, abs=1e-9)
    assert moved("billing_batch_size_sum", subscription="usage.calls") == 11
    assert moved("billing_batch_duration_seconds_count", subscription="usage.calls") >= 1
    assert value(after, "billing_outbox_backlog") >= 0 and value(after, "billing_outbox_oldest_age_seconds") >= 0
    partitions = {
        dict(labels)["partition"]
        for (name, labels) in after
        if name == "billing_consumer_lag" and ("topic", "usage.calls") in labels
    }
    assert {str(p) for p in range(12)} <= partitions  # usage.calls' 12 partitions, all assigned here
    assert time.monotonic() - started < 60


async def _equals(value_of, expected: Decimal) -> bool:
    return await value_of == expected


async def test_a_second_worker_on_a_taken_metrics_port_stops_with_a_clear_error(workers: Workers) -> None:
    taken = workers.metrics_ports["license_orders"]
    proc = workers.start("license_orders", name="license_orders-port-clash", BILLING_METRICS_PORT=str(taken))
    try:
        deadline = time.monotonic() + 180  # a worker's imports alone take a minute on a busy machine
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a process, no event to await
            await asyncio.sleep(0.1)
        assert proc.returncode not in (None, 0)
    finally:
        if "license_orders-port-clash" in workers.procs:
            workers.stop("license_orders-port-clash")
    log = (workers.logs / "license_orders-port-clash.log").read_text()
    assert f"{taken} is already in use" in log and "set BILLING_METRICS_PORT to a free port, or 0" in log
