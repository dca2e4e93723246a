"""Database plumbing: the async engine, waiting for PostgreSQL at start-up, and alembic upgrades."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
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
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=10)
    event.listen(engine.sync_engine.pool, "checkout", _no_closed_connections)
    return engine


def _no_closed_connections(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection whose socket PostgreSQL closed (a restart) is replaced at checkout.

    SQLAlchemy invalidates a connection when its own statements fail, but not when a statement
    sent on the driver connection (``driver_connection``) fails; asyncpg knows without a round
    trip, and the pool retries the checkout with a fresh connection.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("the server closed this connection")


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def driver_connection(session: AsyncSession, first: str | None = None) -> Any:
    """The asyncpg connection under ``session``'s transaction, with ``BEGIN`` already sent.

    The per-message hot paths (inbox, outbox, a license command, a batch of calls) run their
    statements on it: SQLAlchemy's handling of a statement costs about as much client CPU as
    asyncpg's round trip itself. The session still owns the transaction (commit, rollback).
    SQLAlchemy sends ``BEGIN`` lazily, with its first statement; a statement sent here before
    that would run in autocommit, so the transaction is started first when it is not yet.

    ``first``: a statement without parameters run here, in the transaction. When the transaction
    has not begun, it goes with ``BEGIN`` in one round trip (the simple query protocol takes
    several statements), and SQLAlchemy's adapter is handed a ``_Begun`` to end the transaction.
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    driver: Any = raw.driver_connection
    if getattr(adapted, "_transaction", None) is not None:
        if first is not None:
            await driver.execute(first)
    elif first is None:
        await adapted._start_transaction()
    else:
        adapted._transaction = _Begun(driver)  # before: a failure of ``first`` still rolls back
        await driver.execute(f"begin; {first}")
    return driver


class _Begun:
    """A transaction begun by ``driver_connection`` itself: what SQLAlchemy's asyncpg adapter
    calls to end it (as it calls asyncpg's ``Transaction`` when it began the transaction)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    async def commit(self) -> None:
        await self._driver.execute("commit")

    async def rollback(self) -> None:
        await self._driver.execute("rollback")


_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@functools.lru_cache(maxsize=512)
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``... :name ...`` -> ``... $1 ...`` and the names in order: named parameters for asyncpg."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


async def execute(driver: Any, sql: str, params: dict[str, Any]) -> str:
    text_, names = positional(sql)
    result: str = await driver.execute(text_, *(params[n] for n in names))
    return result


async def fetchrow(driver: Any, sql: str, params: dict[str, Any]) -> Any:
    text_, names = positional(sql)
    return await driver.fetchrow(text_, *(params[n] for n in names))


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
