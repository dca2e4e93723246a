"""Usage metering's composition root: calls in big batches on one consumer, commands on another."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from contracts.topics import (
    BILLING_CYCLES,
    METERING_ALERTS,
    METERING_COMMANDS,
    METERING_USAGE,
    PLATFORM_ACCOUNTS,
    USAGE_CALLS,
)
from services.usage_metering.handlers import registry
from services.usage_metering.partitions import CallPartitions
from services.usage_metering.settings import Settings
from services.usage_metering.snapshots import DropMetersOnRebalance, MeterSnapshots
from services.usage_metering.storage import AccountCache, MeterMemory, MeterStore, RecentCalls
from shared.runtime.worker import Subscription, WorkerParts, build_worker

SERVICE = "usage-metering"


def create_worker(settings: Settings | None = None) -> WorkerParts:
    settings = settings or Settings()
    memory = MeterMemory(settings.meter_snapshot_batches)
    account_cache = AccountCache()
    parts = build_worker(
        SERVICE,
        settings,
        registry,
        subscriptions=[
            Subscription(
                (USAGE_CALLS.name,),
                max_records=settings.batch_max_records,
                catch_up_max_records=settings.calls_catch_up_batch_max_records,
                catch_up_lag=settings.calls_catch_up_lag,
                linger_ms=settings.calls_linger_ms,
                fetch_min_bytes=settings.calls_fetch_min_bytes,
                consumers=settings.calls_consumers,
                listener=DropMetersOnRebalance(memory, account_cache),
            ),
            Subscription((PLATFORM_ACCOUNTS.name, METERING_COMMANDS.name, BILLING_CYCLES.name), max_records=2000),
        ],
        publishes=[METERING_ALERTS.name, METERING_USAGE.name, USAGE_CALLS.dlq],
        migrations_dir=Path(__file__).parent / "migrations",
        store=partial(
            MeterStore, recent_calls=RecentCalls(settings.recent_calls), memory=memory, account_cache=account_cache
        ),
        description="Accrues calling credits against each account's monthly cap; alerts and blocks.",
    )
    snapshots = MeterSnapshots(memory, parts.processor.sessions, settings.meter_snapshot_interval_s)
    parts.app.after_startup(snapshots.start)
    parts.app.on_shutdown(snapshots.stop)  # after the worker's own: the last offsets first
    partitions = CallPartitions(settings.database_dsn, settings.retention_interval_s)  # the coming months'
    parts.app.after_startup(partitions.start)
    parts.app.on_shutdown(partitions.stop)
    return parts


def create_app():
    return create_worker().app
