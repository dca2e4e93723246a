"""The compose file runs every worker of the Kubernetes manifests, each on its own database, and
is valid against the compose specification."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from deploy.k8s.generate import WORKERS, worker_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_every_worker_runs_in_compose_with_its_own_database() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    created = set(re.findall(r"CREATE DATABASE (\w+);", (DEPLOY / "compose" / "postgres-init.sql").read_text()))

    for worker in WORKERS:
        assert services[worker.name]["command"] == ["python", "-m", worker.module]
    assert created == {worker_settings(w)["BILLING_DATABASE_NAME"] for w in WORKERS}


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
