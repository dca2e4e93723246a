"""Each service's migrations, run from an empty database through its first revision to head,
leave exactly the schema its ``storage`` metadata declares (alembic's autogenerate comparison
finds nothing to change). A fresh database and one upgraded from the first release are the same."""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
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


async def migrate(engine: AsyncEngine, service: str, revision: str, down: bool = False) -> None:
    """Upgrade (or with ``down``, downgrade) ``service``'s database to ``revision``."""
    config = Config()
    config.set_main_option("script_location", str(ROOT / "services" / service / "migrations"))
    move = command.downgrade if down else command.upgrade

    def run(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        move(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


def _declared(name: str | None, type_: str, _parent: Any) -> bool:
    """The inbox's weekly partitions and the calls ledger's monthly ones (and its default) are made
    by the migrations and the workers (shared/runtime/retention.py, usage metering's partitions.py),
    not declared."""
    return not (type_ == "table" and name is not None and re.fullmatch(r"inbox_\d{8}|calls_(\d{6}|default)", name))


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


async def test_the_calls_ledger_by_month_keeps_every_call_and_meter_through_an_archive_and_a_downgrade(
    scratch_database: AsyncEngine,
) -> None:
    """Usage metering's revision 0010 moves the calls into monthly partitions (the calls from before
    meters in memory, place 0, get places below 1) and their ids into ``call_ids``; an archived
    month's calls come back as their keys on a downgrade, so each call is still charged once and
    each meter is what it was."""
    from services.usage_metering import partitions

    await migrate(scratch_database, "usage_metering", "0009")
    nov = "date '2025-11-01'"
    async with scratch_database.begin() as conn:
        for statement in (
            "insert into accounts values ('acme', 1, 250.00, date '2026-01-01', date '2026-02-01', 0)",
            f"insert into meter_snapshots values ('acme', {nov}, date '2025-12-01', 250.00, 13.00, 0, 0, false, 0, 1)",
            f"insert into calls values ('acme', 'old-1', 5.00, {nov}, 0, 0, 0), ('acme', 'old-2', 6.00, {nov}, 0, 0, 0),"
            f" ('acme', 'c1', 2.00, {nov}, 1, 2.00, 0), ('acme', 'c2', 1.50, {nov}, 2, 1.50, 0),"
            " ('acme', 'd1', 4.00, date '2025-12-01', 1, 4.00, 0)",
            "insert into meter_snapshots values ('acme', date '2025-12-01', date '2026-01-01', 250.00, 0, 0, 0, false,"
            " 0, 0)",
        ):
            await conn.execute(sa.text(statement))

    async def meters() -> list[Any]:
        async with scratch_database.connect() as conn:
            found = await conn.execute(sa.text("select cycle_start, billable, late_unbilled, through_seq from meters"))
            return sorted(tuple(r) for r in found)

    expected = await meters()
    assert [m[1] for m in expected] == [Decimal("14.50"), Decimal("4.00")]
    await migrate(scratch_database, "usage_metering", "0010")
    async with scratch_database.connect() as conn:
        places = await conn.execute(sa.text("select call_id, seq from calls order by call_id"))
        assert [tuple(r) for r in places] == [("c1", 1), ("c2", 2), ("d1", 1), ("old-1", -1), ("old-2", -2)]
        assert await conn.scalar(sa.text("select count(*) from call_ids")) == 5
        assert await conn.scalar(sa.text("select count(*) from calls_202511")) == 4  # a partition per month
    assert await meters() == expected

    async with scratch_database.connect() as conn:
        raw = await conn.get_raw_connection()
        done = await partitions.archive(raw.driver_connection, date(2025, 12, 1), "test")
    assert [m.month for m in done.archived] == [date(2025, 11, 1)]
    assert await meters() == expected  # the snapshot caught up with calls 2 and the view stays

    await migrate(scratch_database, "usage_metering", "0009", down=True)
    async with scratch_database.connect() as conn:
        kept = await conn.execute(sa.text("select call_id, cost, seq from calls order by call_id"))
        assert [tuple(r) for r in kept] == [
            ("c1", Decimal(0), 0),  # archived: its key only
            ("c2", Decimal(0), 0),
            ("d1", Decimal("4.000000"), 1),
            ("old-1", Decimal(0), 0),
            ("old-2", Decimal(0), 0),
        ]
    assert await meters() == expected
    await migrate(scratch_database, "usage_metering", "head")
    assert await meters() == expected


async def test_the_calls_amounts_in_micro_dollars_leave_every_meter_as_it_was_both_ways(
    scratch_database: AsyncEngine,
) -> None:
    """Usage metering's revision 0011 makes the calls' cost and parts integer micro-dollars: the
    same amounts exactly (to the sixth place), and the view ``meters`` gives the same meters, in
    USD of scale 6; its downgrade gives the numerics back."""
    await migrate(scratch_database, "usage_metering", "0010")
    nov = "date '2025-11-01'"
    async with scratch_database.begin() as conn:
        for statement in (
            "insert into accounts values ('acme', 1, 250.00, date '2025-11-01', date '2025-12-01', 0)",
            f"insert into meter_snapshots values ('acme', {nov}, date '2025-12-01', 250.00, 13.000001, 0, 0, false,"
            " 0, 1)",
            f"insert into calls values ('acme', 'c1', 2.00, {nov}, 1, 2.00, 0), "
            f"('acme', 'c2', 240.123456, {nov}, 2, 236.999999, 3.123457), "
            f"('acme', 'c3', 9999.999999, {nov}, 3, 0, 9999.999999), ('acme', 'c4', 0.000001, {nov}, 4, 0, 0.000001)",
        ):
            await conn.execute(sa.text(statement))

    async def state() -> tuple[list[Any], list[Any]]:
        await scratch_database.dispose()  # no statement prepared for the columns' old types
        async with scratch_database.connect() as conn:
            meters = await conn.execute(sa.text("select billable::text, over_cap::text, through_seq from meters"))
            calls = await conn.execute(sa.text("select call_id, cost, billable, over_cap from calls order by call_id"))
            return [tuple(r) for r in meters], [tuple(r) for r in calls]

    meters, calls = await state()
    assert meters == [("250.000000", "10003.123457", 4)]
    await migrate(scratch_database, "usage_metering", "0011")
    assert await state() == (
        meters,
        [
            ("c1", 2_000_000, 2_000_000, 0),
            ("c2", 240_123_456, 236_999_999, 3_123_457),
            ("c3", 9_999_999_999, 0, 9_999_999_999),
            ("c4", 1, 0, 1),
        ],
    )
    await migrate(scratch_database, "usage_metering", "0010", down=True)
    assert await state() == (meters, calls)


def _collations(engine_connection: sa.Connection) -> dict[tuple[str, str], str | None]:
    rows = engine_connection.execute(
        sa.text(
            "select table_name, column_name, collation_name from information_schema.columns "
            "where table_schema = 'public' and data_type = 'text'"
        )
    )
    return {(table, column): collation for table, column, collation in rows}


@pytest.mark.parametrize("service", SERVICES)
async def test_each_text_column_has_the_collation_its_model_declares(
    scratch_database: AsyncEngine, service: str
) -> None:
    """Alembic's comparison does not look at collations: a column declared ``collate "C"`` (usage
    metering's ledger keys, revision 0013) is so in the database, and every other one has the
    database's own."""
    metadata = importlib.import_module(f"services.{service}.storage").metadata
    await migrate(scratch_database, service, "head")
    async with scratch_database.connect() as conn:
        found = await conn.run_sync(_collations)
    declared = {
        (table.name, column.name): getattr(column.type, "collation", None)
        for table in metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, sa.Text)
    }
    assert {key: found.get(key) for key in declared} == declared


async def test_the_ledger_keys_compared_bytewise_find_every_call_and_meter_both_ways(
    scratch_database: AsyncEngine,
) -> None:
    """Usage metering's revision 0013 makes the ledger's keys ``collate "C"``: the calls path's
    lookups by text of the database's collation still find each call by its key (no scan), a
    month's partition made afterwards has the same collation (so it attaches), and the meters are
    the same both ways."""
    from services.usage_metering import partitions, storage

    await migrate(scratch_database, "usage_metering", "0012")
    nov = "date '2026-11-01'"
    async with scratch_database.begin() as conn:
        for statement in (
            "insert into accounts values ('acme', 1, 250.00, date '2026-11-01', date '2026-12-01', 0)",
            f"insert into meter_snapshots values ('acme', {nov}, date '2026-12-01', 250.00, 1.00, 0, 0, false, 0, 1)",
            f"insert into calls values ('acme', 'c1', 2000000, {nov}, 2, 2000000, 0), "
            f"('acme', 'Ç2', 500000, {nov}, 3, 500000, 0)",
            f"insert into call_ids values ('acme', 'c1', {nov}), ('acme', 'Ç2', {nov})",
        ):
            await conn.execute(sa.text(statement))

    async def state() -> tuple[list[Any], list[Any]]:
        await scratch_database.dispose()
        async with scratch_database.connect() as conn:
            meters = await conn.execute(sa.text("select billable::text, through_seq from meters"))
            raw: Any = (await conn.get_raw_connection()).driver_connection
            keys = storage._json([("acme", "c1"), ("acme", "Ç2"), ("acme", "c3")])
            found = await raw.fetch(storage.RECORDED_CALLS, keys)
            return [tuple(r) for r in meters], sorted(tuple(r) for r in found)

    before = await state()
    assert before == ([("3.500000", 3)], [("acme", "c1"), ("acme", "Ç2")])
    await migrate(scratch_database, "usage_metering", "head")
    assert await state() == before
    async with scratch_database.connect() as conn:
        collations = await conn.run_sync(_collations)
        assert collations[("call_ids", "call_id")] == collations[("calls", "account_id")] == "C"
        await conn.execute(sa.text("set enable_seqscan = off"))  # a table of two rows: the key only if it can
        plan = "\n".join(
            row[0] for row in await conn.execute(sa.text("explain " + storage.RECORDED_CALLS.replace("$1", "'[]'")))
        )
        assert "call_ids_pkey" in plan and "Seq Scan" not in plan, plan
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        made = await partitions.ensure_partitions(raw, date(2026, 11, 15))
        assert made, "the coming months' partitions are made and attached"
        collations = await conn.run_sync(_collations)
        assert {collations[(name, "account_id")] for name in made} == {"C"}
    await migrate(scratch_database, "usage_metering", "0012", down=True)
    assert await state() == before
