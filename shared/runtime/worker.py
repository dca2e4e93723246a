"""Builds a service's FastStream app: batch subscribers with at-least-once acks, the relay, start-up.

Each service's ``app.py`` is its composition root and calls ``build_worker`` with its own
settings, handlers, topics and migrations; nothing else wires dependencies.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from faststream.specification import AsyncAPI

from contracts.topics import BY_NAME
from shared.db import make_engine, make_sessions, upgrade_to_head, wait_for_database
from shared.http import Listener
from shared.logs import configure_logging
from shared.runtime import metrics
from shared.runtime.crash_points import CrashPoints
from shared.runtime.offsets import OffsetCommitter, rewind
from shared.runtime.processor import BatchProcessor
from shared.runtime.registry import HandlerRegistry
from shared.runtime.relay import OutboxRelay
from shared.runtime.retention import Retention
from shared.runtime.unit_of_work import StoreFactory
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subscription:
    """Topics one consumer reads, in batches of at most ``max_records``."""

    topics: tuple[str, ...]
    max_records: int | None = None
    # A fetch waits until this much data is there, or ``linger_ms`` passed (then: fetch_max_wait_ms).
    # For a high-rate topic: fewer, fuller batches (fewer transactions and broker requests), at
    # a latency of at most linger_ms; a backlog fills a fetch at once and does not wait.
    linger_ms: int | None = None
    fetch_min_bytes: int = 1
    consumers: int | None = None  # in this process; None: settings.consumers_per_subscription
    # With more than ``catch_up_lag`` records waiting on a consumer's partitions, its batches take
    # up to ``catch_up_max_records`` instead (``CatchUpSize``); None: always ``max_records``.
    catch_up_max_records: int | None = None
    catch_up_lag: int = 0
    # Told when the group's rebalance revokes or assigns partitions (aiokafka's ConsumerRebalanceListener).
    listener: Any = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a subscriber's handler gets for a batch: aiokafka's records as fetched, and the consumer."""

    records: tuple[Any, ...]
    consumer: Any


async def _records_and_consumer(message: KafkaMessage) -> Fetched:
    # Never let the framework decode: bytes that are not JSON must reach the runtime's DLQ path.
    # No dependency injection either: FastDepends ran its ``Context`` lookup in a thread for every
    # batch. And not FastStream's message itself: it keeps the decoded value in a cache of its own,
    # so that would be a reference cycle (message -> cache -> message), freed only by the cyclic
    # collector, holding every batch's records until then (see ``tune_garbage_collector``).
    raw = message.raw_message
    return Fetched(raw if isinstance(raw, tuple) else (raw,), message.consumer)


def _security(settings: ServiceSettings) -> BaseSecurity | None:
    options = settings.kafka_options()
    ssl_context = options.get("ssl_context")
    if settings.kafka_sasl_mechanism is None:
        return BaseSecurity(ssl_context=ssl_context) if ssl_context else None
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    kinds: dict[str, type[SASLPlaintext] | type[SASLScram256] | type[SASLScram512]] = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }
    return kinds[settings.kafka_sasl_mechanism](
        username=settings.kafka_sasl_username or "", password=password, ssl_context=ssl_context
    )


_collection_started = [0.0]
LONG_COLLECTION_S = 0.02


def _log_long_collections(phase: str, info: dict[str, int]) -> None:
    """A cyclic-GC pass stops the whole worker: say so when one takes long (a latency spike)."""
    if phase == "start":
        _collection_started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _collection_started[0]
    if took >= LONG_COLLECTION_S:
        log.warning(
            "long garbage collection: generation %s, %.1f ms, %s objects collected",
            info.get("generation"),
            took * 1000,
            info.get("collected"),
        )


def tune_garbage_collector(young_threshold: int) -> None:
    """What exists at start-up (modules, the app, pools) lives as long as the process: collected
    once, then frozen, the cyclic collector never walks it again. And a batch of thousands of
    messages is garbage by reference counting alone (no cycles: see ``_records_and_consumer``),
    so the collector need not run every 700 allocations: with Python's defaults it keeps walking
    the records aiokafka holds ahead (docs/architecture.md, Decisions). ``young_threshold`` should
    exceed what one batch holds at once.
    The older generations are collected after 20 young and 100 middle collections (Python: 10
    and 10). 0 keeps Python's thresholds."""
    gc.collect()
    gc.freeze()
    if young_threshold > 0:
        gc.set_threshold(young_threshold, 20, 100)
    if _log_long_collections not in gc.callbacks:
        gc.callbacks.append(_log_long_collections)


class CatchUpSize:
    """A subscriber's batch size from the records waiting on its consumer's partitions after each
    batch (the highwater the last fetch saw less the next offset to process): at most ``live``
    while ``lag`` or fewer wait, up to ``catch_up`` beyond. A bigger batch costs less a record
    (usage metering's sorted ``COPY``s, docs/architecture.md, Decisions) but takes longer, and a
    record that arrives behind it waits that out: so a consumer close behind takes small batches
    and one with a backlog big ones. FastStream's batch subscriber reads ``max_records`` at each
    fetch."""

    def __init__(self, subscriber: Any, live: int, catch_up: int, lag: int) -> None:
        self.subscriber, self.live, self.catch_up, self.lag = subscriber, live, catch_up, lag

    def after_batch(self, consumer: Any, positions: dict[Any, int]) -> None:
        waiting = 0
        for tp in consumer.assignment():
            highwater, position = consumer.highwater(tp), positions.get(tp)
            if highwater is not None and position is not None:
                waiting += highwater - position
        self.subscriber.max_records = self.catch_up if waiting > self.lag else self.live


def _consumer(
    processor: BatchProcessor,
    committer: OffsetCommitter,
    timer: metrics.BatchTimer | None,
    size: CatchUpSize | None = None,
) -> Any:
    """The subscriber's handler: process the batch, then hand its offsets to the committer."""

    async def consume(decoded: Any) -> None:  # Any: FastStream documents the payload from this annotation
        batch: Fetched = decoded
        started = time.perf_counter()
        try:
            await processor.process(batch.records)  # aiokafka's records as they are: no copy per record
        except BaseException:
            rewind(batch.consumer, batch.records)  # fetched again, never passed over by a later commit
            raise
        committer.processed(batch.consumer, batch.records)
        if size is not None:
            size.after_batch(batch.consumer, committer.positions)
        if timer is not None:
            timer.observe(len(batch.records), started)

    return consume


@dataclass
class WorkerParts:
    """The running parts of one service process (handy for tests and benchmarks)."""

    app: FastStream
    broker: KafkaBroker
    processor: BatchProcessor
    relay: OutboxRelay
    probes: metrics.Probes


def build_worker(
    service: str,
    settings: ServiceSettings,
    registry: HandlerRegistry,
    subscriptions: Sequence[Subscription],
    publishes: Sequence[str],
    migrations_dir: Path,
    description: str,
    store: StoreFactory | None = None,
) -> WorkerParts:
    """``store`` builds the service's store on a transaction's session: each unit of work
    carries it, with ``settings``, to the handlers."""
    configure_logging(settings.log_level, settings.log_format)
    metrics.enabled = settings.metrics_port != 0
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        security=_security(settings),
        acks="all",
        enable_idempotence=True,
        log_level=logging.DEBUG,  # FastStream's per-batch access lines; our own logs carry the context
        apply_types=False,  # handlers take what the decoder gives (see _records_and_consumer)
    )
    engine = make_engine(settings.database_url)
    sessions = make_sessions(engine)
    relay = OutboxRelay(
        service,
        settings.database_dsn,
        settings.kafka_options(),
        batch_size=settings.relay_batch_size,
        poll_interval_s=settings.relay_poll_interval_s,
        measured=metrics.enabled,
        signer=settings.signer(),
    )
    retention = Retention(
        service,
        settings.database_dsn,
        settings.inbox_retention_days,
        settings.dead_letter_retention_days,
        settings.retention_interval_s,
    )
    processor = BatchProcessor(
        service,
        sessions,
        registry,
        crash_points=CrashPoints(settings.fault_crash_before_commit, settings.fault_crash_after_commit),
        store=store,
        settings=settings,
        metrics=metrics.BatchMetrics(t for s in subscriptions for t in s.topics) if metrics.enabled else None,
        trusted_keys=settings.trusted_keys(),
    )
    probes = metrics.Probes(service, engine)
    listener = (
        Listener(metrics.probe_app(probes), settings.metrics_host, settings.metrics_port, "BILLING_METRICS_PORT")
        if metrics.enabled
        else None
    )
    if settings.reads_commands and not (processor.trusted_keys and processor.trusted_keys.keys):
        log.warning("no trusted keys (BILLING_TRUSTED_KEYS_FILE): every command is refused", extra={"service": service})

    committers: list[OffsetCommitter] = []
    for subscription in subscriptions:
        timer = metrics.BatchTimer(",".join(subscription.topics)) if metrics.enabled else None
        # Several consumers of one group in one process share the partitions: while one waits for
        # PostgreSQL, another processes its batch (each partition still has one consumer, in order).
        for index in range(subscription.consumers or settings.consumers_per_subscription):
            committer = OffsetCommitter(service, settings.offset_commit_interval_ms / 1000)
            live = subscription.max_records or settings.batch_max_records
            committers.append(committer)
            subscriber = broker.subscriber(
                *subscription.topics,
                batch=True,
                group_id=service,
                auto_offset_reset="earliest",
                ack_policy=AckPolicy.MANUAL,  # offsets are committed by the OffsetCommitter, after the transaction
                max_records=live,
                batch_timeout_ms=settings.batch_timeout_ms,
                fetch_max_wait_ms=subscription.linger_ms or settings.fetch_max_wait_ms,
                fetch_min_bytes=subscription.fetch_min_bytes,
                heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
                decoder=_records_and_consumer,
                listener=subscription.listener,
                description="; ".join(BY_NAME[t].description for t in subscription.topics),
                include_in_schema=index == 0,
            )
            size = None
            if subscription.catch_up_max_records:
                size = CatchUpSize(subscriber, live, subscription.catch_up_max_records, subscription.catch_up_lag)
            subscriber(_consumer(processor, committer, timer, size))
            probes.watch(subscription.topics, subscriber, committer)

    dead_letters_of = {t.dlq: t for t in BY_NAME.values()}
    for name in publishes:  # declared for the AsyncAPI document; the outbox relay does the sending
        topic = BY_NAME.get(name)
        if topic is None:
            source = dead_letters_of[name]
            broker.publisher(
                name, description=f"Dead letters of {source.name}: original bytes, where from, error, when."
            )
            continue
        broker.publisher(name, description=topic.description, schema=Union[topic.messages])  # noqa: UP007

    app = FastStream(broker, specification=AsyncAPI(title=service, description=description))

    @app.on_startup
    async def prepare_database() -> None:
        if listener is not None:  # first: /healthz answers while the database is awaited and migrated
            await listener.start()
            log.info("metrics on port %s", listener.port, extra={"service": service})
        await wait_for_database(engine)
        await upgrade_to_head(engine, migrations_dir)
        await retention.run_once()  # this week's inbox partition exists before the first claim

    @app.after_startup
    async def start_relay() -> None:
        await relay.start()
        retention.start()
        tune_garbage_collector(settings.gc_young_threshold)
        probes.started = True
        log.info("worker started", extra={"service": service})

    @app.on_shutdown
    async def commit_last_offsets() -> None:
        for committer in committers:
            await committer.drain()

    @app.after_shutdown
    async def stop_relay() -> None:
        await retention.stop()
        await relay.stop()
        if listener is not None:
            await listener.stop()
        await engine.dispose()

    return WorkerParts(app, broker, processor, relay, probes)
