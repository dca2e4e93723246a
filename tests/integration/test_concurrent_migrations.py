"""Replicas that start together migrate their database once: every worker runs ``alembic upgrade
head`` at start-up (``shared.db.upgrade_to_head``) under a transaction-scoped advisory lock, so the
first one migrates and the others then find the database at head. This is the start-up migration
the Kubernetes Deployments rely on (several pods of a new release start at once)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.db import upgrade_to_head
from tests.support import dsn

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 4


def _as_superuser(database: str) -> str:
    """Scratch databases are the stack's own set-up: only its superuser may make them."""
    return dsn(database, role="postgres").replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    name = f"startup_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(_as_superuser("postgres"), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield name
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'drop database "{name}" with (force)'))
        await admin.dispose()


def head(service: str) -> str:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "services" / service / "migrations"))
    revision = ScriptDirectory.from_config(config).get_current_head()
    assert revision is not None
    return revision


@pytest.mark.parametrize("service", ["license_orders", "usage_metering", "cycle_close"])
async def test_replicas_starting_together_migrate_an_empty_database_once(empty_database: str, service: str) -> None:
    engines: list[AsyncEngine] = [create_async_engine(_as_superuser(empty_database)) for _ in range(REPLICAS)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(upgrade_to_head(engine, ROOT / "services" / service / "migrations") for engine in engines),
                return_exceptions=True,
            ),
            timeout=120,  # without the lock, the replicas' DDL can wait on each other for good
        )
        async with engines[0].connect() as conn:
            versions = (await conn.execute(sa.text("select version_num from alembic_version"))).scalars().all()
    finally:
        await asyncio.gather(*(engine.dispose() for engine in engines))

    assert [r for r in results if isinstance(r, BaseException)] == []
    assert versions == [head(service)]
