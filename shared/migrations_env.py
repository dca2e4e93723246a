"""The body of every service's alembic ``env.py``: run migrations on the connection it is given."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine


def run(target_metadata: sa.MetaData) -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:  # called from shared.db.upgrade_to_head
        _run_on(connection, target_metadata)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url (or run migrations through the worker, which does it at start-up)")

    async def _online() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(_run_on, target_metadata)
        await engine.dispose()

    asyncio.run(_online())


def _run_on(connection: sa.Connection, target_metadata: sa.MetaData) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
