"""How each service's subscriptions become Kafka consumers (no broker needed to build them)."""

from __future__ import annotations

from services.usage_metering.app import create_worker
from services.usage_metering.settings import Settings


def _consumers(settings: Settings) -> dict[str, list[dict[str, object]]]:
    worker = create_worker(settings)
    by_topics: dict[str, list[dict[str, object]]] = {}
    for subscriber in worker.broker.subscribers:
        topics = ",".join(sorted(topic.name for topic in subscriber.topics))  # type: ignore[attr-defined]
        by_topics.setdefault(topics, []).append(subscriber._connection_args)  # type: ignore[attr-defined]
    return by_topics


def test_calls_have_one_lingering_consumer_and_the_rest_the_shared_settings() -> None:
    consumers = _consumers(Settings(consumers_per_subscription=2, fetch_max_wait_ms=100))
    [calls] = consumers["usage.calls"]
    assert calls["fetch_min_bytes"] == 256 * 1024 and calls["fetch_max_wait_ms"] == 10
    others = consumers["billing.cycles,metering.commands,platform.accounts"]
    assert len(others) == 2
    assert all(c["fetch_min_bytes"] == 1 and c["fetch_max_wait_ms"] == 100 for c in others)
    assert all(c["heartbeat_interval_ms"] == 1000 for c in [calls, *others])


def test_the_calls_consumer_is_configurable() -> None:
    consumers = _consumers(Settings(calls_consumers=3, calls_linger_ms=25, calls_fetch_min_bytes=1))
    assert len(consumers["usage.calls"]) == 3
    assert all(c["fetch_min_bytes"] == 1 and c["fetch_max_wait_ms"] == 25 for c in consumers["usage.calls"])
