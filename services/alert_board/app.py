"""Alert board's composition root: the consumer of the alerts and cycle closes, and the web page."""

from __future__ import annotations

import logging
from pathlib import Path

from contracts.topics import BILLING_CYCLES, METERING_ALERTS
from services.alert_board.handlers import LiveFeed, registry, web_app
from services.alert_board.queries import BoardQueries
from services.alert_board.settings import Settings
from services.alert_board.storage import BoardStore
from shared.db import make_engine
from shared.http import Listener
from shared.runtime.worker import Subscription, WorkerParts, build_worker

SERVICE = "alert-board"
log = logging.getLogger(__name__)


def create_worker(settings: Settings | None = None) -> WorkerParts:
    settings = settings or Settings()
    worker = build_worker(
        SERVICE,
        settings,
        registry,
        # One consumer: an account's standing is read and written per alert, in order, and the
        # feed's ids then commit in order too (see LiveFeed for a second replica).
        subscriptions=[Subscription((METERING_ALERTS.name, BILLING_CYCLES.name), consumers=1)],
        publishes=[f"{METERING_ALERTS.name}.dlq", f"{BILLING_CYCLES.name}.dlq"],
        migrations_dir=Path(__file__).parent / "migrations",
        description="Keeps the cap alerts as a read model and shows them to operations on a live page.",
        store=BoardStore,
    )
    engine = make_engine(settings.database_url, pool_size=5)  # the page's reads: a pool of their own
    queries = BoardQueries(engine)
    feed = LiveFeed(queries, settings.database_dsn, settings.board_poll_interval_s)
    page = Listener(web_app(queries, feed), settings.board_host, settings.board_port, "BILLING_BOARD_PORT")

    @worker.app.after_startup
    async def serve_the_page() -> None:  # after the migrations: the page reads the board's tables
        await feed.start()
        await page.start()
        log.info("alert board on http://%s:%s/", settings.board_host, page.port, extra={"service": SERVICE})

    @worker.app.on_shutdown
    async def stop_the_page() -> None:
        await feed.stop()  # ends the open event streams first, so the listener stops at once
        await page.stop()
        await engine.dispose()

    return worker


def create_app():
    return create_worker().app
