"""Test helpers: send contract messages to the real broker, watch output topics, query a service's DB."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import Actor
from contracts.envelope import Envelope

BOOTSTRAP = os.environ.get("BILLING_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PG = "postgresql+asyncpg://billing:billing@127.0.0.1:{port}/{db}"
PG_PORT = int(os.environ.get("BILLING_DATABASE_PORT", "55432"))

ADMIN = Actor(id="admin-1", role="office_admin")
SERVICE = Actor(id="provisioning", role="service")
SUPPORT = Actor(id="support-1", role="support")
SCHEDULER = Actor(id="scheduler", role="service")


def new_account() -> str:
    return f"acct-{uuid.uuid4().hex[:12]}"


def at(day: date, hour: int = 12) -> datetime:
    return datetime.combine(day, time(hour), UTC)


def database(name: str) -> AsyncEngine:
    return create_async_engine(PG.format(port=PG_PORT, db=name), pool_size=2)


class Bus:
    """A producer for the system's inputs and a reader of its outputs, from 'now' on."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.raw: list[tuple[str, bytes]] = []
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
        await self.consumer.start()
        partitions = []
        for topic in self.topics:
            for p in self.consumer.partitions_for_topic(topic) or await self._partitions(topic):
                partitions.append(TopicPartition(topic, p))
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve positions now, so nothing sent after start() is missed
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._read())

    async def _partitions(self, topic: str) -> set[int]:
        await self.consumer._client.force_metadata_update()
        return self.consumer.partitions_for_topic(topic) or set()

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=50)
            if not batches:
                continue
            async with self._changed:
                for records in batches.values():
                    for record in records:
                        self.raw.append((record.topic, record.value))
                        with contextlib.suppress(ValueError):
                            self.received.append((record.topic, json.loads(record.value)))
                self._changed.notify_all()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def send(self, topic: str, message: Envelope | bytes, key: str | None = None) -> None:
        if isinstance(message, Envelope):
            value = message.model_dump_json().encode()
            key = key or message.account_id
        else:
            value = message
        await self.producer.send_and_wait(topic, value, key=key.encode() if key else None)

    def matching(self, topic: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        return [
            body
            for t, body in self.received
            if (topic is None or t == topic) and all(body.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "the expected messages"
    ) -> Any:
        async def _wait() -> Any:
            async with self._changed:
                while not (result := predicate()):
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None

    async def wait_count(self, topic: str, count: int, timeout: float = 30.0, **fields: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.wait_for(
            lambda: r if len(r := self.matching(topic, **fields)) >= count else None,
            timeout,
            f"{count} x {fields or 'any'} on {topic}",
        )
        return found


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
