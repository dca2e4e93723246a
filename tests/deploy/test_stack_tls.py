"""deploy/stack.sh with ``KAFKA_TLS=1``: the broker takes SASL_SSL with a CA the stack makes. A client
that trusts that CA and has its principal's password produces and consumes, a real license-orders
worker believes a signed purchase and answers it over SASL_SSL, and a client that does not trust the
CA cannot connect. A second broker in its own STACK_DIR on free ports, beside the test stack (its
PostgreSQL serves the worker a scratch database)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import messages as m
from contracts.access import reader_of, sender_of, writer_of
from deploy import credentials
from shared.runtime.authentication import Signer
from tests.conftest import free_port
from tests.support import ADMIN, dsn, message, new_account, scalar, wait_until

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "stack.sh"

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]


@dataclass
class TlsStack:
    stack_dir: Path
    env: dict[str, str]
    """STACK_DIR, the ports and KAFKA_TLS: what stack.sh and deploy.credentials see for this stack."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['KAFKA_PORT']}"

    @contextmanager
    def as_current(self) -> Iterator[None]:
        """deploy.credentials reads this stack's secrets (it reads STACK_DIR at each call)."""
        before = os.environ.get("STACK_DIR")
        os.environ["STACK_DIR"] = str(self.stack_dir)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("STACK_DIR", None)
            else:
                os.environ["STACK_DIR"] = before

    def options(self, principal: str) -> dict[str, Any]:
        with self.as_current():
            return credentials.kafka_options(principal)

    def signer(self, principal: str) -> Signer:
        return Signer.from_file(principal, self.stack_dir / "secrets" / f"signing-{principal}.key")


def _stack_sh(command: str, env: dict[str, str], timeout: float = 150) -> str:
    done = subprocess.run(
        ["bash", str(STACK), command], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture
def tls_stack(tmp_path: Path) -> Iterator[TlsStack]:
    stack_dir = tmp_path / "tls-stack"
    # The broker's jars as the test stack resolved them (hard links: no second Maven resolution).
    jars = Path(os.environ.get("STACK_DIR") or ROOT / ".stack") / "kafka" / "libs"
    if jars.is_dir():
        (stack_dir / "kafka").mkdir(parents=True)
        shutil.copytree(jars, stack_dir / "kafka" / "libs", copy_function=os.link)
    ports = {free_port() for _ in range(8)}
    assert len(ports) >= 4
    client, controller, proxied, proxy = sorted(ports)[:4]
    env = {
        **os.environ,
        "STACK_DIR": str(stack_dir),
        "KAFKA_TLS": "1",
        "KAFKA_PORT": str(client),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_PROXIED_PORT": str(proxied),
        "KAFKA_PROXY_PORT": str(proxy),
        "BILLING_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{client}",
    }
    made = TlsStack(stack_dir, env)
    try:
        started = _stack_sh("kafka-start", env)
        assert "SASL_SSL" in started
        provisioned = subprocess.run(
            [sys.executable, "-m", "deploy.provision"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
        yield made
    finally:
        subprocess.run(["bash", str(STACK), "kafka-stop"], env=env, capture_output=True, timeout=60, check=False)
        shutil.rmtree(stack_dir, ignore_errors=True)


@pytest.fixture
async def scratch_database() -> AsyncIterator[tuple[str, str]]:
    """A database of the test stack's PostgreSQL for the TLS stack's worker (the superuser's: only it
    may make one), so it shares no inbox or outbox with the test stack's license orders."""
    name = f"tls_license_orders_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(
        dsn("postgres", role="postgres").replace("postgresql://", "postgresql+asyncpg://", 1),
        isolation_level="AUTOCOMMIT",
    )
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield name, credentials.pg_password("postgres")
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'drop database "{name}" with (force)'))
        await admin.dispose()


async def _produce(stack: TlsStack, topic: str, message_: Any, principal: str, sign: bool) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", **stack.options(principal))
    await producer.start()
    try:
        key, value = message_.account_id.encode(), message_.model_dump_json().encode()
        headers = stack.signer(principal).headers(topic, key, value) if sign else []
        await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


@pytest.fixture
def license_orders(tls_stack: TlsStack, scratch_database: tuple[str, str]) -> Iterator[Path]:
    """A license-orders worker on the TLS broker, as its principal (SASL_SSL, the stack's CA, its
    registry of the TLS stack's keys); yields its log."""
    database, superuser_password = scratch_database
    with tls_stack.as_current():
        worker_env = credentials.env_for("license-orders")
    assert worker_env["BILLING_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert worker_env["BILLING_KAFKA_SSL_CAFILE"] == str(tls_stack.stack_dir / "tls" / "ca.pem")
    log_path = tls_stack.stack_dir / "license-orders.log"
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.license_orders"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **tls_stack.env,
                **worker_env,
                "BILLING_KAFKA_BOOTSTRAP_SERVERS": tls_stack.bootstrap,
                "BILLING_DATABASE_USER": "postgres",
                "BILLING_DATABASE_PASSWORD": superuser_password,
                "BILLING_DATABASE_NAME": database,
                "BILLING_METRICS_PORT": str(free_port()),
                "BILLING_LOG_FORMAT": "text",
            },
        )
    try:
        yield log_path
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def test_a_client_that_trusts_the_stacks_ca_talks_and_one_that_does_not_cannot_connect(
    tls_stack: TlsStack, license_orders: Path, scratch_database: tuple[str, str]
) -> None:
    # The admin UI's client reads licensing.events over SASL_SSL, trusting the stack's CA.
    events = AIOKafkaConsumer(
        "licensing.events",
        bootstrap_servers=tls_stack.bootstrap,
        auto_offset_reset="earliest",
        **tls_stack.options(reader_of("licensing.events").name),
    )
    await events.start()
    try:
        account = new_account()
        day = date(2026, 11, 16)
        opened = message(m.AccountOpened, account, day, billing_day=1)
        await _produce(tls_stack, "platform.accounts", opened, writer_of("platform.accounts").name, sign=False)
        # The two topics are read independently: buy only once the worker knows the account, as
        # the admin UI would (a purchase for an unknown account is rightly rejected).
        await _wait_for_account(scratch_database, account, license_orders)
        purchase = message(m.PurchaseLicenses, account, day, actor=ADMIN, product="user", quantity=3)
        buyer = sender_of("licensing.commands", "office_admin").name
        await _produce(tls_stack, "licensing.commands", purchase, buyer, sign=True)
        try:
            answer = await asyncio.wait_for(_answer_to(events, str(purchase.message_id)), 90)
        except TimeoutError:
            log = await asyncio.to_thread(license_orders.read_text)
            raise AssertionError(f"no answer; the worker's log:\n{log[-3000:]}") from None
    finally:
        await events.stop()
    assert answer["type"] == "LicensesPurchased", answer
    assert answer["balance"]["purchased"] == 3

    # The same principal with its password, but a client that trusts only the system's CAs.
    untrusting = {**tls_stack.options("admin-ui"), "ssl_context": ssl.create_default_context()}
    refused = AIOKafkaProducer(bootstrap_servers=tls_stack.bootstrap, request_timeout_ms=5000, **untrusting)
    with pytest.raises(KafkaConnectionError):
        await refused.start()
    await refused.stop()
    # Nor without TLS at all, on the same port.
    plain = {**tls_stack.options("admin-ui"), "security_protocol": "SASL_PLAINTEXT"}
    plain.pop("ssl_context")
    refused = AIOKafkaProducer(bootstrap_servers=tls_stack.bootstrap, request_timeout_ms=5000, **plain)
    with pytest.raises(KafkaError):
        await refused.start()
    await refused.stop()


async def _wait_for_account(scratch_database: tuple[str, str], account: str, log: Path) -> None:
    name = scratch_database[0]
    url = dsn(name, role="postgres").replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url)
    try:
        await wait_until(
            lambda: scalar(engine, "select count(*) from accounts where account_id = :a", a=account),
            timeout=90,
            what=f"license orders to open the account (its log: {log})",
        )
    finally:
        await engine.dispose()


async def _answer_to(consumer: AIOKafkaConsumer, causation_id: str) -> dict[str, Any]:
    async for record in consumer:
        event = json.loads(record.value or b"{}")
        if event.get("causation_id") == causation_id:
            return dict(event)
    raise AssertionError("the consumer ended")
