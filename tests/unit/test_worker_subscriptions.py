"""How each service's subscriptions become Kafka consumers (no broker needed to build them)."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition

from services.usage_metering.app import create_worker
from services.usage_metering.settings import Settings
from shared.runtime.worker import CatchUpSize


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


class _Consumer:
    """What ``CatchUpSize`` asks of aiokafka's consumer: its partitions and their highwaters."""

    def __init__(self, highwaters: dict[TopicPartition, int | None]) -> None:
        self.highwaters = highwaters

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]


def test_a_consumer_with_a_backlog_takes_bigger_batches_until_it_is_close_behind() -> None:
    subscriber = SimpleNamespace(max_records=5000)
    size = CatchUpSize(subscriber, live=5000, catch_up=20_000, lag=100_000)
    a, b, revoked = TopicPartition("usage.calls", 0), TopicPartition("usage.calls", 1), TopicPartition("usage.calls", 2)

    size.after_batch(_Consumer({a: 900_000, b: 900_000}), {a: 500_000, b: 850_000, revoked: 0})
    assert subscriber.max_records == 20_000  # 450,000 wait on its partitions
    size.after_batch(_Consumer({a: 900_000, b: None}), {a: 850_000, b: 850_000})
    assert subscriber.max_records == 5000  # 50,000 wait (b's highwater not fetched yet)
    size.after_batch(_Consumer({a: 1_000_001, b: 900_000}), {a: 900_000})
    assert subscriber.max_records == 20_000  # b not processed since it was assigned: not counted


def test_the_calls_consumer_starts_at_its_live_batch_size() -> None:
    worker = create_worker(Settings(batch_max_records=4000, calls_catch_up_batch_max_records=16_000))
    [calls] = [s for s in worker.broker.subscribers if [t.name for t in s.topics] == ["usage.calls"]]  # type: ignore[attr-defined]
    assert calls.max_records == 4000  # type: ignore[attr-defined]
    others = [s for s in worker.broker.subscribers if s is not calls]
    assert others and all(s.max_records == 2000 for s in others)  # type: ignore[attr-defined]
