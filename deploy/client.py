"""A small client of the system's topics: send contract messages, read what comes out from 'now' on.

Used by the demo, the benchmarks and the tests (it is not part of any service). It plays every
external client at once, each as its own principal (``contracts.access``): a topic is sent as the
first writer the contract names (``platform.accounts`` as the account service, ...) and read as its
first reader that is not a service, with the stack's credentials (``deploy.credentials``).
Every record it sends to a command topic is signed with that principal's key
(``contracts/signing.md``), unless told not to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts.access import reader_of, sender_of
from contracts.envelope import Envelope
from contracts.topics import COMMAND_TOPICS
from deploy.credentials import kafka_options
from deploy.signing import signer_for

BOOTSTRAP = os.environ.get("BILLING_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


class Bus:
    """A producer for the system's inputs and a reader of its outputs, from 'now' on."""

    def __init__(self, topics: list[str], principal: str | None = None) -> None:
        """``principal``: one principal for everything (e.g. for a topic outside the registry)."""
        self.topics = topics
        self.principal = principal
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.raw: list[tuple[str, bytes]] = []
        self._changed = asyncio.Condition()
        self._producers: dict[str, AIOKafkaProducer] = {}
        self._consumers: dict[str, AIOKafkaConsumer] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _writer(self, topic: str) -> str:
        return self.principal or sender_of(topic, None).name

    def _reader(self, topic: str) -> str:
        return self.principal or reader_of(topic).name

    async def producer(self, principal: str) -> AIOKafkaProducer:
        """The producer that sends as ``principal`` (started on first use)."""
        if principal not in self._producers:
            producer = AIOKafkaProducer(
                bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True, **kafka_options(principal)
            )
            await producer.start()
            self._producers[principal] = producer
        return self._producers[principal]

    async def start(self) -> None:
        by_reader: dict[str, list[str]] = {}
        for topic in self.topics:
            by_reader.setdefault(self._reader(topic), []).append(topic)
        for principal, topics in by_reader.items():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, **kafka_options(principal)
            )
            await consumer.start()
            self._consumers[principal] = consumer
            partitions = []
            for topic in topics:
                for p in consumer.partitions_for_topic(topic) or await self._partitions(consumer, topic):
                    partitions.append(TopicPartition(topic, p))
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:  # resolve positions now, so nothing sent after start() is missed
                await consumer.position(tp)
        self._tasks = [asyncio.create_task(self._read(c)) for c in self._consumers.values()]

    @staticmethod
    async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        await consumer._client.force_metadata_update()
        return consumer.partitions_for_topic(topic) or set()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=50)
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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for consumer in self._consumers.values():
            await consumer.stop()
        for producer in self._producers.values():
            await producer.stop()

    async def send(
        self,
        topic: str,
        message: Envelope | bytes,
        key: str | None = None,
        as_principal: str | None = None,
        signed_as: str | None = None,
        signed: bool = True,
    ) -> None:
        """Send as the topic's writer whose key may claim the message's role (or ``as_principal``);
        on a command topic signed with that principal's key (or ``signed_as``'s; none if not ``signed``)."""
        if isinstance(message, Envelope):
            value = message.model_dump_json().encode()
            key = key or message.account_id
            actor = getattr(message, "actor", None)
            principal = as_principal or self.principal or sender_of(topic, actor.role if actor else None).name
        else:
            value = message
            principal = as_principal or self._writer(topic)
        key_bytes = key.encode() if key else None
        headers: list[tuple[str, bytes]] = []
        if signed and topic in COMMAND_TOPICS:
            headers = signer_for(signed_as or principal).headers(topic, key_bytes, value)
        await self.send_record(topic, key_bytes, value, headers, as_principal=principal)

    async def send_record(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], as_principal: str
    ) -> None:
        """One record exactly as given (headers included), as ``as_principal``."""
        producer = await self.producer(as_principal)
        await producer.send_and_wait(topic, value, key=key, headers=headers)

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
