"""Table sizes per million messages, measured: ``python scripts/table_sizes.py [--rows N] [--revision R]``.

Creates a scratch database on the local stack (``BILLING_DATABASE_*``, a role that may create
databases), migrates usage metering's schema to ``--revision`` (default head), writes ``--rows``
calls as that schema's calls path does (the binary COPYs into ``call_ids`` and ``calls`` from 0010,
into ``calls`` at 0009, the deduplicating insert before) and as many inbox claims with the claim
statement of that schema (the pre-partition one for revisions before 0008), and prints each table's
size (heap, indexes, TOAST; a partition's counted in its table) per million rows. The database is
dropped afterwards.
A measurement of sizes, not of speed (it is no benchmark: it may run beside other work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path

import asyncpg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from services.usage_metering.settings import Settings
from services.usage_metering.storage import CALL_IDS_COLUMNS, CALLS_COLUMNS
from shared.runtime.retention import CLAIM_INBOX

ROOT = Path(__file__).resolve().parents[1]
CLAIM_INBOX_UNPARTITIONED = (  # the claim before revision 0008 (one table, the id its primary key)
    "insert into inbox (message_id, topic) select * from unnest($1::uuid[], $2::text[]) "
    "on conflict do nothing returning message_id"
)
# The calls' claim before revision 0009 (no place or parts per call).
CLAIM_CALLS_WITHOUT_PARTS = (
    "with given as (select r->>0 as a, r->>1 as c, (r->>2)::numeric as k, (r->>3)::date as s, i - 1 as i "
    "from jsonb_array_elements($1::jsonb) with ordinality as t(r, i)), "
    "fresh as (insert into calls (account_id, call_id, cost, cycle_start) select a, c, k, s from given "
    "on conflict do nothing returning account_id, call_id) "
    "select i from given where not exists (select from fresh where account_id = a and call_id = c)"
)
BATCH = 5000
ACCOUNTS = 10_000


def migrate(url: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "services" / "usage_metering" / "migrations"))

    async def run() -> None:
        engine = create_async_engine(url)

        def upgrade(connection: sa.Connection) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        await engine.dispose()

    asyncio.run(run())


SIZES = """
select coalesce(p.relname, c.relname) as table_name, sum(pg_total_relation_size(c.oid))::bigint as bytes
from pg_class c left join pg_inherits i on i.inhrelid = c.oid left join pg_class p on p.oid = i.inhparent
where c.relkind = 'r' and c.relnamespace = 'public'::regnamespace
  and (c.relname in ('calls', 'call_ids', 'inbox') or p.relname in ('calls', 'inbox'))
group by 1 order by 1
"""


async def fill(dsn: str, rows: int, partitioned: bool) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        random.seed(7)
        with_parts = await conn.fetchval(
            "select count(*) = 1 from information_schema.columns where table_name = 'calls' and column_name = 'seq'"
        )
        with_ids = await conn.fetchval("select to_regclass('call_ids') is not null")
        in_micros = await conn.fetchval(  # revision 0011: the calls' amounts in micro-dollars
            "select data_type = 'bigint' from information_schema.columns where table_name = 'calls' "
            "and column_name = 'cost'"
        )
        cycle_start = date.today().replace(day=1)  # this month's partition (made by the migration)
        places: dict[str, int] = {}  # each account's last call's place in its meter
        for start in range(0, rows, BATCH):
            n = min(BATCH, rows - start)
            accounts = [f"acct-{random.randrange(ACCOUNTS):05d}" for _ in range(n)]
            if with_parts:
                batch = []
                for account in accounts:
                    places[account] = places.get(account, 0) + 1
                    cost: Decimal | int = 12_500 if in_micros else Decimal("0.012500")
                    nothing: Decimal | int = 0 if in_micros else Decimal(0)
                    batch.append((account, str(uuid.uuid4()), cost, cycle_start, places[account], cost, nothing))
                async with conn.transaction():  # one batch's transaction, as the calls path writes it
                    if with_ids:
                        call_id_rows = [(a, c, s) for a, c, _, s, _, _, _ in batch]
                        await conn.copy_records_to_table("call_ids", records=call_id_rows, columns=CALL_IDS_COLUMNS)
                    await conn.copy_records_to_table("calls", records=batch, columns=CALLS_COLUMNS)
            else:
                calls = [[a, str(uuid.uuid4()), "0.012500", str(cycle_start)] for a in accounts]
                await conn.fetch(CLAIM_CALLS_WITHOUT_PARTS, json.dumps(calls))
            ids = [uuid.uuid4() for _ in range(n)]
            await conn.fetch(CLAIM_INBOX if partitioned else CLAIM_INBOX_UNPARTITIONED, ids, ["licensing.commands"] * n)
        await conn.execute("vacuum analyze")
        return {r["table_name"]: r["bytes"] for r in await conn.fetch(SIZES)}
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--revision", default="head")
    args = parser.parse_args()
    settings = Settings()
    name = f"sizes_{uuid.uuid4().hex[:10]}"
    admin_dsn = settings.database_dsn.rsplit("/", 1)[0] + "/postgres"
    dsn = settings.database_dsn.rsplit("/", 1)[0] + f"/{name}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        await conn.execute(f'create database "{name}"')
        await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn)
        await conn.execute(f'drop database "{name}" with (force)')
        await conn.close()

    asyncio.run(create())
    try:
        migrate(dsn.replace("postgresql://", "postgresql+asyncpg://", 1), args.revision)

        async def partitioned() -> bool:
            conn = await asyncpg.connect(dsn)
            try:
                return bool(await conn.fetchval("select relkind = 'p' from pg_class where relname = 'inbox'"))
            finally:
                await conn.close()

        is_partitioned = asyncio.run(partitioned())
        sizes = asyncio.run(fill(dsn, args.rows, is_partitioned))
    finally:
        asyncio.run(drop())
    per_million = 1_000_000 / args.rows
    print(
        f"usage metering at revision {args.revision} ({'partitioned' if is_partitioned else 'one'} inbox), {args.rows:,} rows each:"
    )
    for table, size in sorted(sizes.items()):
        print(
            f"  {table:8} {size * per_million / 2**20:8.1f} MiB per million rows ({size / args.rows:.0f} bytes a row)"
        )


if __name__ == "__main__":
    main()
