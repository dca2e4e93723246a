"""License orders' composition root: settings, handlers, topics and migrations wired into one worker."""

from __future__ import annotations

from pathlib import Path

from contracts.topics import BILLING_CYCLES, LICENSING_COMMANDS, LICENSING_EVENTS, PLATFORM_ACCOUNTS
from services.license_orders.handlers import registry
from services.license_orders.settings import Settings
from services.license_orders.storage import LicenseStore
from shared.runtime.worker import Subscription, WorkerParts, build_worker

SERVICE = "license-orders"


def create_worker(settings: Settings | None = None) -> WorkerParts:
    return build_worker(
        SERVICE,
        settings or Settings(),
        registry,
        subscriptions=[Subscription((PLATFORM_ACCOUNTS.name, LICENSING_COMMANDS.name, BILLING_CYCLES.name))],
        publishes=[LICENSING_EVENTS.name, LICENSING_COMMANDS.dlq],
        migrations_dir=Path(__file__).parent / "migrations",
        store=LicenseStore,
        description="Sells licenses and add-ons with proration, schedules removals, enforces seats.",
    )


def create_app():
    """For ``faststream run`` / ``faststream docs gen services.license_orders.app:create_app --factory``."""
    return create_worker().app
