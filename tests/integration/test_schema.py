"""Each service's migrations, run from an empty database through its first revision to head,
leave exactly the schema its ``storage`` metadata declares (alembic's autogenerate comparison
finds nothing to change). A fresh database and one upgraded from the first release are the same."""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.support import dsn

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("license_orders", "usage_metering", "cycle_close", "alert_board")


@pytest.fixture
async def scratch_database() -> AsyncIterator[AsyncEngine]:
    """A new, empty database, dropped after the test. Only the stack's superuser may make one (the
    services' roles may not create databases), so it also runs the migrations here."""
    name = f"schema_test_{uuid.uuid4().hex[:12]}"

    def url(database: str) -> str:
        return dsn(database, role="postgres").replace("postgresql://", "postgresql+asyncpg://", 1)

    admin = create_async_engine(url("postgres"), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'create database "{name}"'))
    engine = create_async_engine(url(name))
    try:
        yield engine
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'drop database "{name}" with (force)'))
        await admin.dispose()


async def migrate(engine: AsyncEngine, service: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "services" / service / "migrations"))

    def upgrade(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


def _declared(name: str | None, type_: str, _parent: Any) -> bool:
    """The inbox's weekly partitions are made by the workers (shared/runtime/retention.py), not declared."""
    return not (type_ == "table" and name is not None and re.fullmatch(r"inbox_\d{8}", name))


def differences(engine_connection: sa.Connection, metadata: sa.MetaData) -> list[Any]:
    context = MigrationContext.configure(
        engine_connection, opts={"compare_type": True, "compare_server_default": True, "include_name": _declared}
    )
    return list(compare_metadata(context, metadata))


@pytest.mark.parametrize("service", SERVICES)
async def test_a_database_migrated_from_the_first_revision_has_the_declared_schema(
    scratch_database: AsyncEngine, service: str
) -> None:
    metadata = importlib.import_module(f"services.{service}.storage").metadata
    await migrate(scratch_database, service, "0001")
    await migrate(scratch_database, service, "head")
    async with scratch_database.connect() as conn:
        found = await conn.run_sync(differences, metadata)
    assert found == [], "the migrations and the model disagree:\n" + "\n".join(map(repr, found))
