"""Who may talk to the broker and the databases, against the real secured stack."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from contracts.access import acls
from deploy import credentials
from deploy.provision import broker_acls, stack_admin
from tests.support import BOOTSTRAP, PG_PORT, dsn

pytestmark = pytest.mark.stack


def producer_as(principal: str, password: str | None = None) -> AIOKafkaProducer:
    options = credentials.kafka_options(principal)
    if password is not None:
        options["sasl_plain_password"] = password
    return AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True, **options)


async def test_a_client_with_a_wrong_password_or_none_cannot_connect(topics: None) -> None:
    wrong = producer_as("telephony", password="not-the-password")
    with pytest.raises(KafkaConnectionError):
        await wrong.start()
    await wrong.stop()
    anonymous = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, request_timeout_ms=5000)
    with pytest.raises(KafkaError):
        await anonymous.start()
    await anonymous.stop()


async def test_telephony_may_send_calls_but_not_commands(topics: None) -> None:
    telephony = producer_as("telephony")
    await telephony.start()
    try:
        await telephony.send_and_wait("usage.calls", b"{}", key=b"acct-security-check")  # its own topic: fine
        for topic in ("metering.commands", "licensing.commands"):
            with pytest.raises(TopicAuthorizationFailedError):
                await telephony.send_and_wait(topic, b"{}", key=b"acct-security-check")
    finally:
        await telephony.stop()


async def test_a_service_cannot_read_a_topic_the_contract_does_not_give_it(topics: None) -> None:
    """License orders reads licensing.commands, never usage.calls; nor may it join another's group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, **credentials.kafka_options("license-orders")
    )
    await consumer.start()
    try:  # the broker answers its metadata request for usage.calls with TOPIC_AUTHORIZATION_FAILED
        assert await consumer._client._wait_on_metadata("licensing.commands")
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer._client._wait_on_metadata("usage.calls")
    finally:
        await consumer.stop()

    stranger = AIOKafkaConsumer(
        "licensing.commands",
        bootstrap_servers=BOOTSTRAP,
        group_id="usage-metering",
        **credentials.kafka_options("license-orders"),
    )
    with pytest.raises(GroupAuthorizationFailedError):
        await stranger.start()
        await stranger.getmany(timeout_ms=5000)
    await stranger.stop()


async def test_the_broker_holds_exactly_the_acls_generated_from_the_registry(topics: None) -> None:
    present = broker_acls(stack_admin(BOOTSTRAP))
    assert {(acl, "ALLOW", "*") for acl in acls()} == present


async def test_the_license_orders_role_cannot_connect_to_the_usage_metering_database(dbs) -> None:
    own = await asyncpg.connect(dsn("license_orders"))
    assert await own.fetchval("select current_user") == "license_orders"
    await own.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(dsn("usage_metering", role="license_orders"))
    with pytest.raises(asyncpg.InvalidPasswordError):  # no trust: a role needs its password
        await asyncpg.connect(
            user="license_orders",
            password=f"x{uuid.uuid4().hex}",
            host="127.0.0.1",
            port=PG_PORT,
            database="license_orders",
        )
