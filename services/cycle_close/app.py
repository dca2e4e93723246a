"""Cycle close's composition root."""

from __future__ import annotations

from pathlib import Path

from contracts.topics import (
    BILLING_CHARGES,
    BILLING_COMMANDS,
    BILLING_CYCLES,
    BILLING_INVOICES,
    LICENSING_EVENTS,
    METERING_USAGE,
    PLATFORM_ACCOUNTS,
)
from services.cycle_close.handlers import registry
from services.cycle_close.settings import Settings
from services.cycle_close.storage import CloseStore
from shared.runtime.worker import Subscription, WorkerParts, build_worker

SERVICE = "cycle-close"


def create_worker(settings: Settings | None = None) -> WorkerParts:
    settings = settings or Settings()
    return build_worker(
        SERVICE,
        settings,
        registry,
        subscriptions=[
            Subscription((PLATFORM_ACCOUNTS.name, BILLING_CHARGES.name, BILLING_COMMANDS.name)),
            Subscription((LICENSING_EVENTS.name, METERING_USAGE.name)),
        ],
        publishes=[BILLING_INVOICES.name, BILLING_CYCLES.name, BILLING_CHARGES.dlq],
        migrations_dir=Path(__file__).parent / "migrations",
        store=CloseStore,
        description="Closes billing cycles into exactly one invoice per account and cycle.",
    )


def create_app():
    return create_worker().app
