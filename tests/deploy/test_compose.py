"""The compose file runs every worker of the Kubernetes manifests as its own principal, on its own
database, with passwords and keys only from the env file deploy/.env (made by ``deploy.compose_env``),
each worker that reads commands with its registry of trusted keys, and is valid against the
compose specification."""

from __future__ import annotations

import base64
import importlib
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from contracts.access import BY_PRINCIPAL, PRINCIPALS, SERVICES, trusted_keys
from deploy import compose_env, credentials
from deploy.k8s.generate import WORKERS
from shared.runtime.authentication import Signer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_TEXT = (DEPLOY / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICE_ENTRIES = COMPOSE["services"]


def interpolated(value: str) -> str | None:
    """The variable a ``${VAR:?...}`` value takes from the env file, else None."""
    found = re.fullmatch(r"\$\{([A-Z0-9_]+):\?[^}]*\}", value)
    return found[1] if found else None


def test_every_worker_runs_as_its_own_principal_on_its_own_database() -> None:
    for worker in WORKERS:
        principal = BY_PRINCIPAL[worker.name]
        entry = SERVICE_ENTRIES[worker.name]
        env = entry["environment"]

        reads_commands = importlib.import_module(f"{worker.module}.settings").Settings.reads_commands
        wrapper = ["python", "-m", "deploy.compose_env", "start", "--"] if reads_commands else []
        assert entry["command"] == [*wrapper, "python", "-m", worker.module]
        assert env["BILLING_KAFKA_SASL_USERNAME"] == principal.name
        assert interpolated(env["BILLING_KAFKA_SASL_PASSWORD"]) == compose_env.kafka_variable(principal.name)
        assert env["BILLING_DATABASE_NAME"] == env["BILLING_DATABASE_USER"] == principal.database
        assert interpolated(env["BILLING_DATABASE_PASSWORD"]) == compose_env.pg_variable(principal.database or "")
        assert env["BILLING_KAFKA_SECURITY_PROTOCOL"].startswith("SASL_")
        assert env["BILLING_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        passwords = {v for v in map(interpolated, map(str, env.values())) if v}
        keys = {compose_env.trusted_variable(principal.name)} if reads_commands else set()
        if principal.claims:
            keys.add(compose_env.signing_variable(principal.name))
            assert env["BILLING_SIGNING_KEY_ID"] == principal.name
        assert passwords == {
            compose_env.kafka_variable(principal.name),
            compose_env.pg_variable(principal.database or ""),
            *keys,
        }, "a worker gets its own two passwords, its own keys and no other"
        assert (interpolated(env.get("TRUSTED_KEYS", "")) is not None) == reads_commands


def test_the_workers_that_read_commands_are_exactly_those_with_a_registry() -> None:
    readers = {w.name for w in WORKERS if importlib.import_module(f"{w.module}.settings").Settings.reads_commands}

    assert set(compose_env.command_readers()) == readers == {"license-orders", "usage-metering", "cycle-close"}
    assert {n for n, e in SERVICE_ENTRIES.items() if "SIGNING_KEY" in e.get("environment", {})} == {"cycle-close"}


def test_postgres_makes_a_role_and_database_for_every_service_and_the_broker_its_super_users() -> None:
    postgres = SERVICE_ENTRIES["postgres"]["environment"]
    databases = [p.database for p in SERVICES if p.database]

    assert postgres["BILLING_DATABASES"].split() == databases
    for database in databases:
        assert interpolated(postgres[compose_env.pg_variable(database)]) == compose_env.pg_variable(database)
    kafka = SERVICE_ENTRIES["kafka"]["environment"]
    assert {interpolated(kafka[k]) for k in ("KAFKA_PASSWORD_STACK", "KAFKA_PASSWORD_CONTROLLER")} == {
        "KAFKA_PASSWORD_STACK",
        "KAFKA_PASSWORD_CONTROLLER",
    }
    provision = SERVICE_ENTRIES["provision"]
    assert provision["env_file"] == [".env"] and "deploy.compose_env" in provision["command"]


def test_every_variable_the_compose_file_uses_is_one_the_env_file_has() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_TEXT))

    assert used <= set(compose_env.variables())
    assert {compose_env.kafka_variable(p.name) for p in PRINCIPALS} <= set(compose_env.variables())


def test_the_env_file_is_made_private_keeps_its_passwords_and_adds_the_missing(tmp_path: Path) -> None:
    path = tmp_path / ".env"

    assert compose_env.write(path) == (len(compose_env.variables()), 0)
    first = compose_env.read(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(first) == set(compose_env.variables()) and len(set(first.values())) == len(first)

    kept_out = compose_env.kafka_variable("telephony")
    path.write_text("".join(f"{k}={v}\n" for k, v in first.items() if k != kept_out) + "MY_OWN=1\n")
    assert compose_env.write(path) == (1, len(first) - 1)
    second = compose_env.read(path)
    assert {k: v for k, v in second.items() if k != kept_out} == {
        **{k: v for k, v in first.items() if k != kept_out},
        "MY_OWN": "1",
    }
    assert second[kept_out] and second[kept_out] != first[kept_out]


def test_the_env_files_registries_hold_each_signers_key_toward_that_service_only(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    compose_env.write(path)
    values = compose_env.read(path)
    signers = {p: Signer(p, base64.b64decode(values[compose_env.signing_variable(p)])) for p in credentials.signers()}

    held: dict[str, dict[str, bytes]] = {}
    for service in compose_env.command_readers():
        registry = json.loads(base64.b64decode(values[compose_env.trusted_variable(service)]))
        assert {k: e["roles"] for k, e in registry["keys"].items()} == {
            k: list(r) for k, r in trusted_keys(BY_PRINCIPAL[service]).items()
        }
        held[service] = {k: base64.b64decode(e["key"]) for k, e in registry["keys"].items()}
        assert held[service] == {k: signers[k].key_toward(service) for k in held[service]}
    # The operator signs toward all three; no service holds the key another one checks.
    operator_keys = [keys["operator"] for keys in held.values()]
    assert len(held) == 3 and len(set(operator_keys)) == 3
    assert all(len(master) == 32 for master in (s.master for s in signers.values()))
    rotated = compose_env.signing_variable("cycle-close")
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items() if k != rotated))
    compose_env.write(path)
    again = compose_env.read(path)
    assert again[rotated] != values[rotated]
    assert again[compose_env.trusted_variable("cycle-close")] != values[compose_env.trusted_variable("cycle-close")]
    assert (
        again[compose_env.trusted_variable("license-orders")] == values[compose_env.trusted_variable("license-orders")]
    )


def test_a_workers_start_writes_its_keys_private_and_production_settings_accept_them(tmp_path: Path) -> None:
    from services.cycle_close.settings import Settings

    env_file = tmp_path / ".env"
    compose_env.write(env_file)
    values = compose_env.read(env_file)
    entry = SERVICE_ENTRIES["cycle-close"]["environment"]
    environment = {k: values[v] if (v := interpolated(str(x))) else str(x) for k, x in entry.items()}

    started = compose_env.start_environment(environment, tmp_path / "keys")

    assert "TRUSTED_KEYS" not in started and "SIGNING_KEY" not in started
    trusted = Path(started["BILLING_TRUSTED_KEYS_FILE"])
    signing = Path(started["BILLING_SIGNING_KEY_FILE"])
    assert {stat.S_IMODE(trusted.stat().st_mode), stat.S_IMODE(signing.stat().st_mode)} == {0o600}
    settings = Settings.model_validate(
        {k.removeprefix("BILLING_").lower(): v for k, v in started.items() if k.startswith("BILLING_")}
    )
    assert settings.environment == "production"
    assert set(settings.trusted_keys().keys) == set(trusted_keys(BY_PRINCIPAL["cycle-close"]))
    signer = settings.signer()
    assert signer is not None and signer.key_id == "cycle-close"
    value = b'{"type": "CloseBillingCycles"}'
    headers = signer.headers("billing.commands", b"k", value)  # a continuation, toward itself
    assert settings.trusted_keys().refusal("billing.commands", b"k", value, headers, "operator") is None


def test_the_provision_service_puts_the_passwords_where_credentials_reads_them(tmp_path: Path) -> None:
    environment = {compose_env.kafka_variable(n): f"pw-{n}" for n in ("stack", *(p.name for p in PRINCIPALS))}

    compose_env.put_kafka_passwords(environment, tmp_path / "secrets")

    for name in ("stack", *(p.name for p in PRINCIPALS)):
        written = tmp_path / "secrets" / f"kafka-{name}"
        assert written.read_text() == f"pw-{name}" and stat.S_IMODE(written.stat().st_mode) == 0o600


def test_the_env_file_is_kept_out_of_git_and_out_of_the_image() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT)
    assert ignored.returncode == 0
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert dockerignore.index("deploy/.env") > dockerignore.index("!deploy/")  # the later line wins


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
