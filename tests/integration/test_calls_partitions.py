"""Usage metering's calls ledger by month on a real database: the worker makes the coming months'
partitions and gives a month whose calls went to the default partition one of its own; a month
archived never gets one again, its late calls stay in the default partition."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.usage_metering import partitions
from tests.integration.test_schema import migrate, scratch_database  # noqa: F401 - the fixture

pytestmark = pytest.mark.stack


def test_months_follow_each_other_across_a_year_end() -> None:
    assert partitions.next_month(date(2026, 12, 1)) == date(2027, 1, 1)
    assert partitions.next_month(date(2027, 1, 1)) == date(2027, 2, 1)
    assert partitions.partition_name(date(2027, 1, 1)) == "calls_202701"


async def test_the_coming_months_and_a_month_in_the_default_partition_get_their_own(
    scratch_database: AsyncEngine,  # noqa: F811 - the fixture
) -> None:
    await migrate(scratch_database, "usage_metering", "head")

    async def run(statement: str) -> None:
        async with scratch_database.begin() as conn:
            await conn.execute(sa.text(statement))

    async def count(table: str) -> int:
        async with scratch_database.connect() as conn:
            return int(await conn.scalar(sa.text(f"select count(*) from {table}")))

    await run("insert into accounts values ('acme', 1, 250.00, date '2026-01-01', date '2026-02-01', 0)")
    await run(
        "insert into meter_snapshots values ('acme', date '2019-05-01', date '2019-06-01', 250.00, 0, 0, 0, false, 0, 0)"
    )
    # 1 USD (amounts in micro-dollars), of a month with no partition: into the default one
    await run("insert into calls values ('acme', 'c1', 1000000, date '2019-05-01', 1, 1000000, 0)")
    assert await count("calls_default") == 1

    async with scratch_database.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        made = await partitions.ensure_partitions(driver, date(2031, 11, 15))
        assert made == ["calls_201905", "calls_203111", "calls_203112", "calls_203201"]
        assert await partitions.ensure_partitions(driver, date(2031, 11, 20)) == []  # nothing to make: no lock
        assert (await count("calls_default"), await count("calls_201905")) == (0, 1)

        done = await partitions.archive(driver, date(2019, 6, 1), "test")
        assert [(m.month, m.partition, m.calls) for m in done.archived] == [(date(2019, 5, 1), "calls_201905", 1)]
        await run("insert into calls values ('acme', 'c2', 2000000, date '2019-05-01', 2, 2000000, 0)")  # a late call
        assert await partitions.ensure_partitions(driver, date(2031, 11, 20)) == []
    assert await count("calls_default") == 1
    async with scratch_database.connect() as conn:
        found = await conn.execute(sa.text("select late_unbilled, snapshot_seq, through_seq from meters"))
        # Both calls came after the snapshot of a cycle already sealed (late): c1 is in the snapshot
        # since the archive, and the view adds c2 from the default partition.
        assert [tuple(r) for r in found] == [(3, 1, 2)]
