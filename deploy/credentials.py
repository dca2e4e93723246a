"""How a process gets its credentials on the local stack: by principal name.

The stack keeps one generated password per principal in ``$STACK_DIR/secrets`` (outside git,
the directory mode 700, each file 600): ``kafka-<principal>`` for Kafka's SCRAM users (every
principal of ``contracts.access``, plus ``stack``, the broker's own super user, and
``controller``), ``pg-<role>`` for PostgreSQL's login roles (one per service, plus the
``postgres`` superuser), ``signing-<principal>.key`` (the master secret, 32 raw bytes, of each
principal that signs commands) with ``trusted-keys-<service>.json`` (each service's registry: the
keys toward it derived from those secrets and the roles each may claim, from
``contracts.access.trusted_keys``; a secret too), and ``kafka.protocol`` (``SASL_PLAINTEXT``, or
``SASL_SSL`` when the stack runs TLS with its own CA in ``$STACK_DIR/tls``). ``deploy/stack.sh`` creates them
(``python -m deploy.credentials ensure``).

A process gets its principal's settings as ``BILLING_*`` variables:

- from Python, ``env_for("license-orders")`` (merge it into a child's environment) or
  ``kafka_options("telephony")`` (keyword arguments for an aiokafka client);
- from a shell, ``python -m deploy.credentials run license-orders -- python -m services.license_orders``.

A service's variables carry its database role and its trusted keys too; a principal that signs
commands gets its signing key (``BILLING_SIGNING_KEY_FILE``, ``BILLING_SIGNING_KEY_ID``); the
operator's (the ``billing`` CLI) carry every service's role as ``BILLING_<SERVICE>_DATABASE_USER``
/ ``_PASSWORD``, which each service's settings prefer. A new process plugs in by adding its
principal to ``contracts/access.py``; the stack creates its password and ACLs at the next ``up``
(``python -m deploy.provision``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import ssl
import sys
from pathlib import Path
from typing import Any

from contracts.access import BY_PRINCIPAL, OPERATOR, PRINCIPALS, SERVICES, trusted_keys

ROOT = Path(__file__).resolve().parents[1]
STACK_PRINCIPAL = "stack"
"""The broker's own SCRAM user, a super user: the stack's set-up (users, ACLs) and nothing else."""
CONTROLLER_PRINCIPAL = "controller"
PG_SUPERUSER = "postgres"
SCRAM_MECHANISM = "SCRAM-SHA-512"


def stack_dir() -> Path:
    return Path(os.environ.get("STACK_DIR") or ROOT / ".stack")


def secrets_dir() -> Path:
    return stack_dir() / "secrets"


def kafka_principals() -> list[str]:
    return [STACK_PRINCIPAL, CONTROLLER_PRINCIPAL, *(p.name for p in PRINCIPALS)]


def pg_roles() -> list[str]:
    return [PG_SUPERUSER, *(p.database for p in SERVICES if p.database)]


def ensure(directory: Path | None = None) -> None:
    """Create a password for every principal and role that has none yet (existing ones are kept)."""
    directory = directory or secrets_dir()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    names = [f"kafka-{n}" for n in kafka_principals()] + [f"pg-{r}" for r in pg_roles()]
    for name in names:
        path = directory / name
        if not path.exists():
            _write_new(path, secrets.token_urlsafe(24).encode())
    _ensure_signing_keys(directory)


def _write_new(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)


def signers() -> list[str]:
    """The principals that sign the commands they send (they may claim a role)."""
    return [p.name for p in PRINCIPALS if p.claims]


def new_signing_key() -> bytes:
    """A new master secret: 32 random bytes (the keys toward each service are derived from it)."""
    from shared.runtime.authentication import MASTER_SECRET_BYTES  # not at the top: it loads the runtime

    return secrets.token_bytes(MASTER_SECRET_BYTES)


def registry(service: str, masters: dict[str, bytes]) -> str:
    """The ``trusted-keys-<service>.json`` text: each sender it trusts (by principal), its key toward
    this service (derived from the sender's master secret) and the roles it may claim. A secret."""
    import base64
    import json

    from shared.runtime.authentication import receiver_key

    trusted = trusted_keys(BY_PRINCIPAL[service]).items()
    keys = {
        kid: {"key": base64.b64encode(receiver_key(masters[kid], service)).decode(), "roles": list(roles)}
        for kid, roles in trusted
    }
    return json.dumps({"keys": keys}, indent=2) + "\n"


def _ensure_signing_keys(directory: Path) -> None:
    """A master secret per principal that signs commands; each service's registry of the keys toward it."""
    for stale in directory.glob("signing-*.pem"):  # an older stack's Ed25519 keys, no longer used
        stale.unlink()
    masters: dict[str, bytes] = {}
    for principal in signers():
        path = directory / f"signing-{principal}.key"
        if not path.exists():
            _write_new(path, new_signing_key())
        masters[principal] = path.read_bytes()
    for service in SERVICES:
        path = directory / f"trusted-keys-{service.name}.json"
        temporary = path.with_name(path.name + ".tmp")
        temporary.unlink(missing_ok=True)
        _write_new(temporary, registry(service.name, masters).encode())  # mode 600 from the start
        os.replace(temporary, path)  # also over an older stack's, which was readable by all


def signing_key_file(principal: str) -> Path:
    return secrets_dir() / f"signing-{principal}.key"


def trusted_keys_file(service: str) -> Path:
    return secrets_dir() / f"trusted-keys-{service}.json"


def _read(name: str) -> str:
    path = secrets_dir() / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise RuntimeError(f"no credentials in {path}: start the stack first (bash deploy/stack.sh up)") from None


def kafka_password(principal: str) -> str:
    return _read(f"kafka-{principal}")


def pg_password(role: str) -> str:
    return _read(f"pg-{role}")


def kafka_protocol() -> str:
    path = secrets_dir() / "kafka.protocol"
    return path.read_text().strip() if path.exists() else "SASL_PLAINTEXT"


def ca_file() -> str | None:
    ca = stack_dir() / "tls" / "ca.pem"
    return str(ca) if kafka_protocol() == "SASL_SSL" else None


def env_for(principal: str) -> dict[str, str]:
    """The ``BILLING_*`` variables that make ``shared.settings`` connect as ``principal``."""
    if principal not in BY_PRINCIPAL and principal != STACK_PRINCIPAL:
        raise KeyError(f"unknown principal {principal!r}: add it to contracts/access.py")
    env = {
        "BILLING_KAFKA_SECURITY_PROTOCOL": kafka_protocol(),
        "BILLING_KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
        "BILLING_KAFKA_SASL_USERNAME": principal,
        "BILLING_KAFKA_SASL_PASSWORD": kafka_password(principal),
    }
    if cafile := ca_file():
        env["BILLING_KAFKA_SSL_CAFILE"] = cafile
    known = BY_PRINCIPAL.get(principal)
    if known is not None and known.database:
        env["BILLING_DATABASE_USER"] = known.database
        env["BILLING_DATABASE_PASSWORD"] = pg_password(known.database)
        env["BILLING_TRUSTED_KEYS_FILE"] = str(trusted_keys_file(principal))
    if known is not None and known.claims:
        env["BILLING_SIGNING_KEY_FILE"] = str(signing_key_file(principal))
        env["BILLING_SIGNING_KEY_ID"] = principal
    if principal == OPERATOR.name:  # the billing CLI reads each service's database as that service
        for service in SERVICES:
            if service.database:
                prefix = f"BILLING_{service.database.upper()}_DATABASE"
                env[f"{prefix}_USER"] = service.database
                env[f"{prefix}_PASSWORD"] = pg_password(service.database)
    return env


def kafka_options(principal: str) -> dict[str, Any]:
    """aiokafka keyword arguments (security only; the bootstrap servers are the caller's)."""
    options: dict[str, Any] = {
        "security_protocol": kafka_protocol(),
        "sasl_mechanism": SCRAM_MECHANISM,
        "sasl_plain_username": principal,
        "sasl_plain_password": kafka_password(principal),
    }
    if cafile := ca_file():
        options["ssl_context"] = ssl.create_default_context(cafile=cafile)
    return options


def confluent_options(principal: str) -> dict[str, str]:
    """The same for a confluent-kafka (librdkafka) client."""
    options = {
        "security.protocol": kafka_protocol(),
        "sasl.mechanism": SCRAM_MECHANISM,
        "sasl.username": principal,
        "sasl.password": kafka_password(principal),
    }
    if cafile := ca_file():
        options["ssl.ca.location"] = cafile
    return options


def database_dsn(role: str, database: str, host: str = "127.0.0.1", port: int | None = None) -> str:
    """A libpq URL for one of the stack's PostgreSQL roles (the port from BILLING_DATABASE_PORT)."""
    from shared.db import postgres_dsn

    port = port or int(os.environ.get("BILLING_DATABASE_PORT", "55432"))
    return postgres_dsn(role, pg_password(role), host, port, database)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.credentials", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ensure", help="create the passwords that are missing")
    sub.add_parser("databases", help="print the services' databases, one a line")
    sub.add_parser("principals", help="print the Kafka principals, one a line")
    run = sub.add_parser("run", help="run a command as PRINCIPAL: run PRINCIPAL -- COMMAND ...")
    run.add_argument("principal")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "ensure":
        ensure()
    elif args.command == "databases":
        print("\n".join(p.database for p in SERVICES if p.database))
    elif args.command == "principals":
        print("\n".join(kafka_principals()))
    else:
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run needs a command after --")
        os.execvpe(cmd[0], cmd, {**os.environ, **env_for(args.principal)})
    sys.exit(0)


if __name__ == "__main__":
    main()
