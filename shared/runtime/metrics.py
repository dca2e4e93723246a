"""A worker's metrics and health: Prometheus counters, ``/metrics``, ``/healthz`` and ``/readyz``.

What each worker shows on ``BILLING_METRICS_PORT`` (0: no listener and no counting at all):

- ``billing_messages_total{topic, outcome}``: records processed, by outcome: ``handled``,
  ``duplicate`` (the inbox had it), ``rejected`` (a ``CommandRejected`` went back),
  ``dead_lettered``, ``ignored`` (a type of the topic this service has no use for);
- ``billing_batch_size`` and ``billing_batch_duration_seconds`` per subscription;
- ``billing_outbox_backlog``, ``billing_outbox_oldest_age_seconds``, ``billing_relay_publish_seconds``,
  ``billing_relay_published_total``; ``billing_consumer_lag{topic, partition}``; ``billing_ready``;
- the services' business counters (alerts, calls and their amount, invoices and their total),
  counted after their transaction committed, money in ``Decimal`` (``DecimalCounter``).

The hot path pays one counter add per label and batch, with the label children bound once; what
needs a query (the outbox, lag, readiness) is computed when someone asks, never per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from operator import attrgetter
from typing import Any

import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)
disable_created_metrics()  # no ``*_created`` series: half the lines, and nobody here reads them

enabled = False
"""Set by the worker when its metrics listener is on; business counters are only counted then."""

OUTCOMES = ("handled", "duplicate", "rejected", "dead_lettered", "ignored")
MESSAGES = Counter("billing_messages", "Records processed, by topic and outcome.", ["topic", "outcome"])
BATCH_SIZE = Histogram(
    "billing_batch_size",
    "Records per batch handed to the processor.",
    ["subscription"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "billing_batch_duration_seconds",
    "Time to process a batch until its transaction committed (retries included).",
    ["subscription"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RELAY_SECONDS = Histogram(
    "billing_relay_publish_seconds",
    "Outbox relay: from the first send of a round to the broker's last acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELAY_PUBLISHED = Counter("billing_relay_published", "Outbox rows the broker acknowledged.")
OUTBOX_BACKLOG = Gauge("billing_outbox_backlog", "Outbox rows not yet published (when last scraped).")
OUTBOX_OLDEST = Gauge("billing_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row (0: none).")
LAG = Gauge("billing_consumer_lag", "Records on the broker this worker has not processed yet.", ["topic", "partition"])
READY = Gauge("billing_ready", "1 when /readyz says ready.")


class DecimalCounter(Collector):
    """A counter of money: kept as an exact ``Decimal`` sum, turned into a number only when scraped
    (a float counter adding 0.10 ten times shows 0.9999999999999999)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _DecimalChild] = {}
        if not self.labelnames:
            self._children[()] = _DecimalChild()
        registry.register(self)

    def labels(self, *values: str) -> _DecimalChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        return self._children.setdefault(tuple(values), _DecimalChild())

    def inc(self, amount: Decimal) -> None:
        self._children[()].inc(amount)

    def value(self, *values: str) -> Decimal:
        child = self._children.get(tuple(values))
        return child.value if child else Decimal(0)

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, float(child.value))
        yield family


class _DecimalChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = Decimal(0)

    def inc(self, amount: Decimal) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class BatchMetrics:
    """What the processor reports once a batch's transaction committed."""

    def __init__(self, topics: Iterable[str]) -> None:
        self._children: dict[tuple[str, str], Any] = {}
        for topic in topics:
            self._bind(topic)

    def _bind(self, topic: str) -> None:
        for outcome in OUTCOMES:
            self._children[(topic, outcome)] = MESSAGES.labels(topic, outcome)

    def committed(
        self,
        records: Sequence[Any],
        outcomes: Tally[tuple[str, str]],
        counted: Sequence[tuple[Any, Any]],
        one_topic: bool,
    ) -> None:
        """``outcomes``: the batch's records that were not handled, by (topic, outcome); the rest
        were handled. ``one_topic``: the caller knows every record is of the first one's topic
        (the hot path of ``usage.calls``), so they are not counted one by one."""
        if not records:
            return
        if one_topic:
            totals: dict[str, int] = {records[0].topic: len(records)}
        else:
            totals = Tally(map(attrgetter("topic"), records))
        for topic in totals:
            if (topic, "handled") not in self._children:
                self._bind(topic)
        for (topic, outcome), count in outcomes.items():
            self._children[(topic, outcome)].inc(count)
            totals[topic] = totals.get(topic, 0) - count
        for topic, handled in totals.items():
            if handled > 0:
                self._children[(topic, "handled")].inc(handled)
        for child, amount in counted:
            child.inc(amount)


class BatchTimer:
    """A subscription's batch histograms, bound once."""

    def __init__(self, subscription: str) -> None:
        self.size = BATCH_SIZE.labels(subscription)
        self.seconds = BATCH_SECONDS.labels(subscription)

    def observe(self, size: int, started: float) -> None:
        self.size.observe(size)
        self.seconds.observe(time.perf_counter() - started)


def relay_round(rows: int, seconds: float) -> None:
    RELAY_SECONDS.observe(seconds)
    RELAY_PUBLISHED.inc(rows)


class Probes:
    """Readiness and the metrics that need a question to the database or the consumers."""

    def __init__(self, service: str, engine: Any, timeout_s: float = 2.0) -> None:
        self.service = service
        self.engine = engine
        self.timeout_s = timeout_s
        self.started = False
        self.consumers: list[tuple[tuple[str, ...], Any, Any]] = []  # (topics, FastStream subscriber, committer)
        self.outbox = True
        self._committed: dict[Any, int] = {}

    def watch(self, topics: tuple[str, ...], subscriber: Any, committer: Any) -> None:
        self.consumers.append((topics, subscriber, committer))

    async def not_ready(self) -> list[str]:
        """Why this worker is not ready; empty when it is."""
        reasons = []
        if not self.started:
            reasons.append("starting: waiting for the database, migrations and the Kafka consumers")
        for topics, subscriber, _ in self.consumers if self.started else ():
            why = _not_in_group(subscriber.consumer)
            if why:
                reasons.append(f"kafka: the consumer of {', '.join(topics)} is not in group {self.service}: {why}")
        try:
            await asyncio.wait_for(self._select_one(), self.timeout_s)
        except Exception as exc:
            reasons.append(f"database: {_describe(exc)}")
        READY.set(0 if reasons else 1)
        return reasons

    async def _select_one(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(sa.text("select 1"))

    async def sample(self) -> None:
        """Bring the gauges up to date for a scrape; a part that cannot answer keeps its last value."""
        await self.not_ready()
        if self.outbox:
            try:
                await asyncio.wait_for(self._sample_outbox(), self.timeout_s)
            except Exception as exc:
                log.debug("outbox not sampled", extra={"error": repr(exc)})
        try:
            await asyncio.wait_for(self._sample_lag(), self.timeout_s)
        except Exception as exc:
            log.debug("consumer lag not sampled", extra={"error": repr(exc)})

    async def _sample_outbox(self) -> None:
        async with self.engine.connect() as connection:
            backlog, age = (
                await connection.execute(
                    sa.text("select count(*), coalesce(extract(epoch from now() - min(created_at)), 0) from outbox")
                )
            ).one()
        OUTBOX_BACKLOG.set(backlog)
        OUTBOX_OLDEST.set(float(age))

    async def _sample_lag(self) -> None:
        """Per assigned partition: the broker's high-water mark (from the last fetch) minus the
        next offset this worker has to process (its processed position; before its first batch
        there, the group's committed offset)."""
        lags: dict[tuple[str, str], int] = {}
        assigned: set[Any] = set()
        for _topics, subscriber, committer in self.consumers:
            consumer = subscriber.consumer
            if consumer is None:
                continue
            for tp in consumer.assignment():
                assigned.add(tp)
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                position = committer.positions.get(tp)
                if position is None:
                    position = self._committed.get(tp)
                if position is None:
                    position = await consumer.committed(tp) or 0
                    self._committed[tp] = position
                lags[(tp.topic, str(tp.partition))] = max(0, highwater - position)
        for tp in [tp for tp in self._committed if tp not in assigned]:
            del self._committed[tp]
        LAG.clear()
        for (topic, partition), lag in lags.items():
            LAG.labels(topic, partition).set(lag)


def _not_in_group(consumer: Any) -> str | None:
    """Why an aiokafka consumer is not a member of its group with an assignment (None: it is).
    aiokafka has no public call for this; FastStream's loop retries a failing consumer forever
    (a denied group, the broker away) without stopping, so the state is read where it is kept."""
    if consumer is None:
        return "not running"
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return "not started"
    if getattr(coordinator, "coordinator_id", None) is None:
        return "no group coordinator (the broker is unreachable, or the group is not allowed)"
    if not getattr(coordinator, "member_id", ""):
        return "not a member yet (joining, or refused)"
    subscription = getattr(getattr(consumer, "_subscription", None), "subscription", None)
    if subscription is None or subscription.assignment is None:
        return "waiting for its partitions (a rebalance)"
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]


def probe_app(probes: Probes) -> Starlette:
    """``/healthz``: the process answers. ``/readyz``: 200 or 503 with the reasons. ``/metrics``."""

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_request: Request) -> Response:
        reasons = await probes.not_ready()
        if reasons:
            return PlainTextResponse("not ready\n" + "".join(f"- {r}\n" for r in reasons), status_code=503)
        return PlainTextResponse("ready\n")

    async def metrics(_request: Request) -> Response:
        await probes.sample()
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)],
    )
