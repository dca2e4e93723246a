"""deploy/stack.sh's PostgreSQL follows the stack's secrets: a restart keeps the cluster, and a cluster
made with other passwords (an earlier clone at the same path left it in /var/tmp, its secrets gone with
that clone) is made anew instead of refusing every login. A second PostgreSQL on its own port and dirs,
beside the test stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "stack.sh"

pytestmark = pytest.mark.stack


class Stack:
    def __init__(self, stack_dir: Path, pg_dir: Path, port: int) -> None:
        self.stack_dir, self.pg_dir, self.port = stack_dir, pg_dir, port

    def run(self, command: str) -> str:
        env = {**os.environ, "STACK_DIR": str(self.stack_dir), "PG_DIR": str(self.pg_dir), "PG_PORT": str(self.port)}
        done = subprocess.run(
            ["bash", str(STACK), command], env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def login(self) -> str:
        """What the superuser sees through a password login with this stack's secret."""
        password = (self.stack_dir / "secrets" / "pg-postgres").read_text().strip()
        psql = next(Path("/usr/lib/postgresql").glob("*/bin/psql"))
        done = subprocess.run(
            [str(psql), "-X", "-At", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-c", "select count(*) from pg_database where datname = 'kept'"],
            env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def sql(self, statement: str) -> None:
        password = (self.stack_dir / "secrets" / "pg-postgres").read_text().strip()
        psql = next(Path("/usr/lib/postgresql").glob("*/bin/psql"))
        subprocess.run(
            [str(psql), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-c", statement],
            env={**os.environ, "PGPASSWORD": password}, capture_output=True, timeout=30, check=True,
        )  # fmt: skip


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # Outside the mode-700 pytest dir: as root the server runs as the postgres OS user.
    pg_dir = Path("/var/tmp") / f"license-billing-test-{uuid.uuid4().hex[:10]}"
    made = Stack(tmp_path / "stack", pg_dir, free_port())
    try:
        yield made
    finally:
        subprocess.run(
            ["bash", str(STACK), "pg-stop"],
            env={**os.environ, "STACK_DIR": str(made.stack_dir), "PG_DIR": str(pg_dir), "PG_PORT": str(made.port)},
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        shutil.rmtree(pg_dir, ignore_errors=True)


def test_a_restart_keeps_the_cluster_and_other_secrets_get_a_new_one(stack: Stack) -> None:
    stack.run("pg-start")
    stack.sql("create database kept")
    stack.run("pg-stop")

    restarted = stack.run("pg-start")
    assert "deleting" not in restarted
    assert stack.login() == "1"
    stack.run("pg-stop")

    # A new clone at the same path: new secrets, the old cluster still in PG_DIR.
    shutil.rmtree(stack.stack_dir / "secrets")
    anew = stack.run("pg-start")
    assert "made with other passwords" in anew
    assert stack.login() == "0"
