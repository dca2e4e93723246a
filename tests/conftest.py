"""Fixtures: the real stack (Kafka + PostgreSQL, started by deploy/stack.sh) and the three workers.

Tests that need the stack are marked ``stack``. Each test uses fresh account ids, so tests
share the broker, topics and databases without seeing each other's data.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from contracts.topics import TOPICS
from deploy.credentials import env_for
from tests.support import Bus, database

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("license_orders", "usage_metering", "cycle_close")
OUTPUT_TOPICS = [
    "licensing.events",
    "metering.alerts",
    "metering.usage",
    "billing.invoices",
    "billing.cycles",
] + [t.dlq for t in TOPICS]


def free_port() -> int:
    """A loopback port nobody listens on now (for a worker's metrics listener or the board's page)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Workers:
    """The services as real processes, each its own consumer group member and its own principal."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}
        self.logs = ROOT / ".stack" / "test-logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, service: str, name: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        """``name``'s metrics listener gets a free port of its own (replicas of one service run
        side by side here), unless ``BILLING_METRICS_PORT`` is given."""
        name = name or service
        env.setdefault("BILLING_METRICS_PORT", str(free_port()))
        self.metrics_ports[name] = int(env["BILLING_METRICS_PORT"])
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Cycle close takes 2 accounts per transaction here, so every close in the tests
            # goes through the continuations of its trigger.
            env={
                **os.environ,
                **env_for(service.replace("_", "-")),
                "BILLING_LOG_FORMAT": "text",
                "BILLING_CLOSE_CHUNK_ACCOUNTS": "2",
                **env,
            },
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = 15) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture(scope="session")
def topics() -> None:
    """Create the registry's users, ACLs and topics (harmless when they exist) before anything uses them."""
    from deploy.provision import create_topics, grant_access
    from tests.support import BOOTSTRAP

    grant_access(BOOTSTRAP)
    asyncio.run(create_topics(BOOTSTRAP))


@pytest.fixture(scope="session")
def workers(topics: None) -> Iterator[Workers]:
    started = Workers()
    for service in SERVICES:
        started.start(service)
    yield started
    started.stop_all()


@pytest.fixture(scope="session")
async def bus(topics: None) -> AsyncIterator[Bus]:
    bus = Bus(OUTPUT_TOPICS)
    await bus.start()
    yield bus
    await bus.stop()


@pytest.fixture(scope="session")
async def dbs():
    engines = {name: database(name) for name in SERVICES}
    yield engines
    await asyncio.gather(*(e.dispose() for e in engines.values()))


@pytest.fixture(scope="session")
async def stack(workers: Workers, bus: Bus, dbs) -> AsyncIterator[Bus]:
    """Everything running, and every worker past start-up (it answered a probe account)."""
    bus.dbs = dbs  # type: ignore[attr-defined]  # lets helpers wait for what the services recorded
    from datetime import UTC, datetime

    from contracts.messages import AccountOpened
    from tests.support import scalar, wait_until

    probe = f"probe-{uuid.uuid4().hex[:8]}"
    await bus.send(
        "platform.accounts",
        AccountOpened(message_id=uuid.uuid4(), account_id=probe, occurred_at=datetime.now(UTC), billing_day=1),
    )
    tables = {"license_orders": "accounts", "usage_metering": "accounts", "cycle_close": "billing_accounts"}
    for name, table in tables.items():
        await wait_until(
            lambda n=name, t=table: scalar(dbs[n], f"select count(*) from {t} where account_id = :a", a=probe),  # type: ignore[misc]
            timeout=90,
            what=f"{name} to record the probe account (see .stack/test-logs/{name}.log)",
        )
    yield bus
