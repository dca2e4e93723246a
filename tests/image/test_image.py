"""The container image: built by deploy/image.sh from the locked dependencies, a worker from it
processes a message from the local stack, and it holds no build tools or tests.

Marked ``image`` (builds the image, minutes); the default run leaves it out, CI runs it on its own
(``scripts/test -m image``), when no other license-orders worker is in the consumer group.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts import messages as m
from tests.support import ADMIN, BOOTSTRAP, Bus, database, message, new_account, scalar, wait_until

pytestmark = [pytest.mark.image, pytest.mark.stack, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE", "localhost/license-billing:test")
PODMAN = ["podman", "--runtime", "runc"]
IMAGE_USER = 10001  # the Containerfile's USER
# podman's default open-files limit is above these machines' hard limit.
RUN = [*PODMAN, "run", "--network", "host", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image() -> str:
    subprocess.run(["bash", "deploy/image.sh"], cwd=ROOT, env={**os.environ, "IMAGE": IMAGE}, check=True)
    return IMAGE


@contextmanager
def running(image: str, *command: str) -> Iterator[str]:
    """A container from the image on the host's network, read-only, with this stack's BILLING_* settings."""
    name = f"license-billing-test-{uuid.uuid4().hex[:8]}"
    env = {key: value for key, value in os.environ.items() if key.startswith("BILLING_")}
    env |= stack_credentials("env_for", "license-orders")
    settings = [f"--env={key}={value}" for key, value in env.items()]
    if cafile := env.get("BILLING_KAFKA_SSL_CAFILE"):  # the stack's own CA, when it runs TLS
        settings.append(f"--volume={cafile}:{cafile}:ro")
    private = Path(tempfile.mkdtemp(prefix="license-billing-keys-"))
    if keys := env.get("BILLING_TRUSTED_KEYS_FILE"):  # a secret (mode 600): a copy the image's user owns
        copy = private / "trusted-keys.json"
        shutil.copyfile(keys, copy)
        if os.geteuid() == 0:
            os.chown(copy, IMAGE_USER, IMAGE_USER)
            copy.chmod(0o600)
        else:  # a rootless podman maps the host's user to the container's root, not to 10001
            copy.chmod(0o644)
        settings.append(f"--volume={copy}:{keys}:ro")
    subprocess.run(
        [*RUN, "--detach", "--read-only", "--name", name, *settings, "--env=BILLING_LOG_FORMAT=text", image, *command],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield name
    finally:
        logs = subprocess.run([*PODMAN, "logs", "--tail", "40", name], capture_output=True, text=True)
        print(f"--- last lines of {name}:\n{logs.stdout}{logs.stderr}")
        subprocess.run([*PODMAN, "rm", "--force", "--time", "10", name], capture_output=True)
        shutil.rmtree(private, ignore_errors=True)


def stack_credentials(helper: str, principal: str) -> dict[str, Any]:
    """A principal's credentials on a local stack that has them (deploy/credentials.py: SCRAM users
    and a PostgreSQL role per service), else nothing."""
    if importlib.util.find_spec("deploy.credentials") is None:
        return {}
    return dict(getattr(importlib.import_module("deploy.credentials"), helper)(principal))


async def group_members(group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP, **stack_credentials("kafka_options", group))
    await admin.start()
    try:
        [description] = await admin.describe_consumer_groups([group])
        return sum(
            len(group[5]) for group in description.groups
        )  # (error, id, state, protocol type, protocol, members)
    finally:
        await admin.close()


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


def test_the_image_runs_as_a_non_root_user_without_build_tools_or_tests(image: str) -> None:
    probe = """
import importlib.util, json, os, shutil
print(json.dumps({
    "uid": os.getuid(),
    "modules": {n: importlib.util.find_spec(n) is not None for n in ("services.usage_metering", "pip", "uv", "pytest", "tests")},
    "tools": {t: shutil.which(t) for t in ("pip", "pip3", "uv", "gcc", "cc")},
    "billing": shutil.which("billing"),
    "sources": os.path.exists("/src"),
}))
"""
    out = subprocess.run([*RUN, "--rm", "--read-only", image, "python", "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)

    assert facts["uid"] == 10001
    assert facts["modules"] == {
        "services.usage_metering": True,
        "pip": False,
        "uv": False,
        "pytest": False,
        "tests": False,
    }
    assert facts["tools"] == {"pip": None, "pip3": None, "uv": None, "gcc": None, "cc": None}
    assert facts["sources"] is False
    assert facts["billing"] == "/opt/app/bin/billing"


async def test_a_worker_from_the_image_processes_a_message_from_the_local_stack(image: str, bus: Bus) -> None:
    # The reply below can only come from the container when it is the group's only member.
    await wait_until(
        lambda: _is_zero(group_members("license-orders")), timeout=60, what="no other license-orders worker"
    )
    engine = database("license_orders")
    try:
        with running(image, "python", "-m", "services.license_orders") as name:
            account = new_account()
            await bus.send("platform.accounts", message(m.AccountOpened, account, date(2026, 11, 1), billing_day=1))
            await wait_until(
                lambda: scalar(engine, "select count(*) from accounts where account_id = :a", a=account),
                timeout=120,
                what=f"the containerised worker to record the account (podman logs {name})",
            )
            members = await group_members("license-orders")
            buy = message(m.PurchaseLicenses, account, date(2026, 11, 16), actor=ADMIN, product="user", quantity=2)
            await bus.send("licensing.commands", buy)
            [reply] = await bus.wait_count("licensing.events", 1, causation_id=str(buy.message_id))
    finally:
        await engine.dispose()

    assert members > 0  # the container's consumers, the only ones in the group
    assert reply["type"] == "LicensesPurchased"
    assert reply["prorated_amount"] == "15.00"
