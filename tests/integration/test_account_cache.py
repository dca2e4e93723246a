"""The accounts a worker's batches of calls keep (``storage.AccountCache``), on a real database:
held once the transaction that read them commits, and read again after any change of an account,
whichever process made it: a cap change, a seal moving the open cycle, an update by hand."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.usage_metering.storage import AccountCache, MeterStore
from shared.cycles import Cycle
from shared.db import make_sessions
from tests.integration.test_schema import migrate, scratch_database  # noqa: F401 - the fixture

pytestmark = pytest.mark.stack

NOV = Cycle(date(2026, 11, 1), date(2026, 12, 1))
DEC = Cycle(date(2026, 12, 1), date(2027, 1, 1))


async def test_a_batch_reads_only_the_accounts_it_does_not_hold_and_every_one_again_after_a_change(
    scratch_database: AsyncEngine,  # noqa: F811 - the fixture
) -> None:
    await migrate(scratch_database, "usage_metering", "head")
    sessions = make_sessions(scratch_database)
    cache = AccountCache()

    async def run(*statements: str) -> None:
        async with scratch_database.begin() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))

    async def batch_reads(account_ids: list[str]) -> dict[str, tuple[Decimal, Cycle, int]]:
        """What a batch of calls finds (in a transaction that commits)."""
        async with sessions() as session, session.begin():
            store = MeterStore(session, account_cache=cache)
            await store.share_metering()
            found = await store.accounts_for_calls(account_ids)
        return {a: (account.cap, account.open_cycle, account.meter_epoch) for a, account in found.items()}

    async with sessions() as session, session.begin():
        store = MeterStore(session)
        await store.open_account("acme", 1, Decimal("250.00"), NOV)
        await store.open_account("globex", 1, Decimal("100.00"), NOV)

    assert await batch_reads(["acme", "globex", "initech"]) == {
        "acme": (Decimal("250.00"), NOV, 0),
        "globex": (Decimal("100.00"), NOV, 0),
    }
    assert len(cache) == 2  # initech is not open: not held, so it is looked up again next time

    # What a batch uses is the cache: an update no trigger sees (triggers off) is not seen...
    await run("set local session_replication_role = replica", "update accounts set cap = 1 where account_id = 'acme'")
    assert (await batch_reads(["acme"]))["acme"][0] == Decimal("250.00")

    # ...and any change that does is, for every held account: a cap change,
    async with sessions() as session, session.begin():
        store = MeterStore(session)
        await store.own_metering()
        await store.set_cap("globex", Decimal("80.00"))
    assert await batch_reads(["acme", "globex"]) == {
        "acme": (Decimal("1.00"), NOV, 0),  # read again: the update the cache had not seen shows now
        "globex": (Decimal("80.00"), NOV, 1),
    }
    # a seal moving the open cycle,
    async with sessions() as session, session.begin():
        store = MeterStore(session)
        await store.own_metering()
        await store.move_open_cycles([("acme", DEC)])
    assert (await batch_reads(["acme"]))["acme"][1:] == (DEC, 1)
    # an update by hand,
    await run("update accounts set cap = 90 where account_id = 'globex'")
    assert (await batch_reads(["globex"]))["globex"][0] == Decimal("90.00")
    # and an account opened since is found.
    async with sessions() as session, session.begin():
        await MeterStore(session).open_account("initech", 1, Decimal("50.00"), NOV)
    assert (await batch_reads(["initech"]))["initech"][0] == Decimal("50.00")


async def test_accounts_read_in_a_transaction_that_rolls_back_are_not_held(
    scratch_database: AsyncEngine,  # noqa: F811 - the fixture
) -> None:
    await migrate(scratch_database, "usage_metering", "head")
    sessions = make_sessions(scratch_database)
    cache = AccountCache()

    with pytest.raises(RuntimeError, match="the batch failed"):
        async with sessions() as session, session.begin():
            store = MeterStore(session, account_cache=cache)
            await store.open_account("acme", 1, Decimal("250.00"), NOV)  # not committed
            assert set(await store.accounts_for_calls(["acme"])) == {"acme"}
            raise RuntimeError("the batch failed after reading its accounts")
    assert len(cache) == 0 and cache.version is None

    async with sessions() as session, session.begin():
        assert await MeterStore(session, account_cache=cache).accounts_for_calls(["acme"]) == {}
