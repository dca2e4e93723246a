"""A small client of the system's topics: send contract messages, read what comes out from 'now' on.

Used by the demo, the benchmarks and the tests (it is not part of any service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts.envelope import Envelope

BOOTSTRAP = os.environ.get("BILLING_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


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
