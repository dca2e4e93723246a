"""Database plumbing: the async engine, waiting for PostgreSQL at start-up, and alembic upgrades."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

log = logging.getLogger(__name__)


def postgres_dsn(user: str, password: str, host: str, port: int, database: str) -> str:
    """A libpq-style URL that asyncpg takes directly. ``host`` may be a directory: PostgreSQL's
    Unix socket there (same machine), about half the client CPU and latency of TCP per statement."""
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    if host.startswith("/"):
        return f"postgresql://{credentials}@/{database}?host={quote(host, safe='')}&port={port}"
    return f"postgresql://{credentials}@{host}:{port}/{database}"


def make_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    # No pre-ping: it costs a round trip per transaction, and the processor and the relay
    # already retry a batch whose connection turned out to be dead.
    return create_async_engine(url, pool_size=pool_size, max_overflow=10)


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def wait_for_database(engine: AsyncEngine, timeout_s: float = 60.0) -> None:
    """Retry until PostgreSQL answers, so a worker may start before the database."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
            return
        except Exception as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("database not ready, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)


async def upgrade_to_head(engine: AsyncEngine, migrations_dir: Path) -> None:
    """Run ``alembic upgrade head`` for one service's migrations on this engine."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))

    def _upgrade(sync_connection: object) -> None:
        config.attributes["connection"] = sync_connection
        command.upgrade(config, "head")

    async with engine.begin() as conn:
        # Serialise concurrent upgrades of replicas starting together.
        await conn.execute(text("select pg_advisory_xact_lock(7240001)"))
        await conn.run_sync(_upgrade)
