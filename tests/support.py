"""Test helpers: contract messages for an account and day, and queries of a service's database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import Actor
from deploy import credentials
from deploy.client import BOOTSTRAP as BOOTSTRAP
from deploy.client import Bus as Bus

PG_PORT = int(os.environ.get("BILLING_DATABASE_PORT", "55432"))

ADMIN = Actor(id="admin-1", role="office_admin")
SERVICE = Actor(id="provisioning", role="service")
SUPPORT = Actor(id="support-1", role="support")
SCHEDULER = Actor(id="scheduler", role="service")


def new_account() -> str:
    return f"acct-{uuid.uuid4().hex[:12]}"


def at(day: date, hour: int = 12) -> datetime:
    return datetime.combine(day, time(hour), UTC)


def dsn(database: str, role: str | None = None) -> str:
    """A libpq URL for a service's database, as that service's own role (or ``role``)."""
    return credentials.database_dsn(role or database, database, port=PG_PORT)


def database(name: str) -> AsyncEngine:
    """An engine on a service's database, logged in as that service (the only role that may)."""
    url = dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1)
    return create_async_engine(url, pool_size=2, pool_pre_ping=True)


async def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "the condition") -> Any:
    """Poll an async check (e.g. a database query) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = await check()
            if result:
                return result
        except Exception as exc:  # e.g. the table does not exist until the worker migrated
            last_error = exc
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error!r})")
        await asyncio.sleep(0.05)


async def scalar(engine: AsyncEngine, query: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(sa.text(query), params)


async def rows(engine: AsyncEngine, query: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.text(query), params)).all())


def message(model: type[Any], account_id: str, day: date, actor: Actor | None = None, **fields: Any) -> Any:
    """A contract message for ``account_id`` happening at noon UTC on ``day``."""
    extra = {"actor": actor} if actor is not None else {}
    return model(message_id=uuid.uuid4(), account_id=account_id, occurred_at=at(day), **extra, **fields)


ACCOUNT_TABLES = {"license_orders": "accounts", "usage_metering": "accounts", "cycle_close": "billing_accounts"}


async def open_account(bus: Bus, day: date = date(2026, 11, 1), billing_day: int = 1) -> str:
    """Open a fresh account and wait until all three services know it (as the admin UI would
    before offering to buy licenses)."""
    from contracts.messages import AccountOpened

    account = new_account()
    await bus.send("platform.accounts", message(AccountOpened, account, day, billing_day=billing_day))
    dbs = getattr(bus, "dbs", None)
    if dbs is not None:
        for service, table in ACCOUNT_TABLES.items():
            await wait_until(
                lambda s=service, t=table: scalar(dbs[s], f"select count(*) from {t} where account_id = :a", a=account),  # type: ignore[misc]
                what=f"{service} to open the account",
            )
    return account


@contextlib.asynccontextmanager
async def scratch_topic(partitions: int, **grants: tuple[str, ...]) -> AsyncIterator[str]:
    """A topic of the test's own, outside the registry, that only the principals in ``grants`` may
    use (``license_orders=("WRITE",)``; DESCRIBE comes with any grant); deleted with its ACLs after."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from contracts.access import Acl
    from deploy.provision import _binding, stack_admin

    topic = f"scratch-{uuid.uuid4().hex[:8]}"
    entries = [
        Acl(f"User:{principal.replace('_', '-')}", "TOPIC", topic, "LITERAL", op)
        for principal, ops in grants.items()
        for op in {*ops, "DESCRIBE"}
    ]
    bindings = [_binding(e) for e in entries]
    kafka = stack_admin(BOOTSTRAP)
    for future in kafka.create_acls(bindings, request_timeout=30).values():
        await asyncio.wrap_future(future)
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP, **credentials.kafka_options("admin"))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        yield topic
    finally:
        await admin.delete_topics([topic])
        await admin.close()
        filters = [_binding(e, as_filter=True) for e in entries]
        for future in kafka.delete_acls(filters, request_timeout=30).values():
            await asyncio.wrap_future(future)
