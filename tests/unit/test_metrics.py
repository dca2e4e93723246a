"""Worker metrics: exact money counters, outcome counts per batch, and the probe endpoints."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from shared.runtime import metrics


def samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def messages(topic: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("billing_messages_total", {"topic": topic, "outcome": outcome}) or 0.0


def test_a_money_counter_adds_decimals_exactly_and_shows_the_exact_sum() -> None:
    registry = CollectorRegistry()
    amounts = metrics.DecimalCounter("test_amount_usd", "Test amounts.", registry=registry)
    for _ in range(10):
        amounts.inc(Decimal("0.10"))
    amounts.inc(Decimal("0.000001"))

    assert amounts.value() == Decimal("1.000001")
    assert samples(registry)["test_amount_usd_total"] == 1.000001  # a float counter: 1.0000009999999999


def test_a_batch_counts_what_was_not_handled_by_outcome_and_the_rest_as_handled() -> None:
    batch = metrics.BatchMetrics(["t.commands"])
    records = [SimpleNamespace(topic="t.commands")] * 6 + [SimpleNamespace(topic="t.accounts")] * 2
    before = {o: messages("t.commands", o) for o in metrics.OUTCOMES}
    accounts_before = messages("t.accounts", "handled")

    batch.committed(records, Counter({("t.commands", "duplicate"): 2, ("t.commands", "rejected"): 1}), (), False)

    after = {o: messages("t.commands", o) - before[o] for o in metrics.OUTCOMES}
    assert after == {"handled": 3, "duplicate": 2, "rejected": 1, "dead_lettered": 0, "ignored": 0}
    assert messages("t.accounts", "handled") - accounts_before == 2


def test_business_counts_are_added_only_when_the_batch_reports_its_commit() -> None:
    registry = CollectorRegistry()
    invoiced = metrics.DecimalCounter("test_invoiced_usd", "Test.", registry=registry)
    batch = metrics.BatchMetrics(["t.single"])
    records = [SimpleNamespace(topic="t.single")] * 3

    batch.committed(records, Counter(), [(invoiced, Decimal("15.00")), (invoiced, Decimal("0.50"))], True)

    assert invoiced.value() == Decimal("15.50")


class _Engine:
    """Stands in for the worker's engine: its database answers or not."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def connect(self) -> Any:
        engine = self

        class _Connection:
            async def __aenter__(self) -> Any:
                if engine.error is not None:
                    raise engine.error
                return self

            async def __aexit__(self, *_: object) -> None:
                return None

            async def execute(self, *_: object) -> None:
                return None

        return _Connection()


def _consumer(member_id: str, coordinator_id: int | None) -> Any:
    return SimpleNamespace(
        _coordinator=SimpleNamespace(coordinator_id=coordinator_id, member_id=member_id),
        _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=object())),
    )


def _probes(error: Exception | None, consumer: Any) -> metrics.Probes:
    probes = metrics.Probes("test-service", _Engine(error))
    probes.watch(("t.commands",), SimpleNamespace(consumer=consumer), SimpleNamespace(positions={}))
    probes.started = True
    return probes


def test_readyz_says_ready_when_the_consumers_are_in_their_group_and_the_database_answers() -> None:
    client = TestClient(metrics.probe_app(_probes(None, _consumer("member-1", 1))))

    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.text == "ready\n"


def test_readyz_names_the_database_when_it_does_not_answer() -> None:
    client = TestClient(metrics.probe_app(_probes(ConnectionRefusedError("connection refused"), _consumer("m", 1))))

    response = client.get("/readyz")

    assert response.status_code == 503
    assert "database: ConnectionRefusedError: connection refused" in response.text


def test_readyz_names_a_consumer_that_never_joined_its_group() -> None:
    client = TestClient(metrics.probe_app(_probes(None, _consumer("", None))))

    response = client.get("/readyz")

    assert response.status_code == 503
    assert "kafka: the consumer of t.commands is not in group test-service: no group coordinator" in response.text


def test_readyz_is_not_ready_while_the_worker_starts() -> None:
    probes = _probes(None, _consumer("m", 1))
    probes.started = False

    response = TestClient(metrics.probe_app(probes)).get("/readyz")

    assert response.status_code == 503 and "starting" in response.text
