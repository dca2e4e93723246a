"""The passwords of the Compose setup (deploy/compose.yaml), kept in deploy/.env, never in git.

``python -m deploy.compose_env`` (or ``... write [--file PATH]``) writes the file, mode 600: a
generated password for every Kafka principal of ``contracts.access`` plus the broker's own
``stack`` and ``controller`` (``KAFKA_PASSWORD_<PRINCIPAL>``), and for every PostgreSQL role, each
service's and the ``postgres`` superuser (``PG_PASSWORD_<ROLE>``). Passwords already in the file
are kept, so running it again after a principal is added only adds that one.

``python -m deploy.compose_env provision --bootstrap kafka:9092`` is the Compose ``provision``
service's command: it gets the whole file as its environment (it sets every principal's SCRAM
credential), writes the Kafka passwords where ``deploy.credentials`` reads them
(``$STACK_DIR/secrets``, a tmpfs in the container), and then does what ``python -m
deploy.provision`` does: the SCRAM users, exactly the registry's ACLs, the topics.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from contracts.access import PRINCIPALS
from deploy import credentials

ENV_FILE = Path(__file__).resolve().parent / ".env"


def kafka_variable(principal: str) -> str:
    return "KAFKA_PASSWORD_" + principal.upper().replace("-", "_")


def pg_variable(role: str) -> str:
    return "PG_PASSWORD_" + role.upper().replace("-", "_")


def variables() -> list[str]:
    """Every password variable of the Compose setup, in the file's order."""
    return [kafka_variable(p) for p in credentials.kafka_principals()] + [
        pg_variable(r) for r in credentials.pg_roles()
    ]


_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def read(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return {m[1]: m[2] for line in path.read_text().splitlines() if (m := _LINE.match(line.strip()))}


def write(path: Path = ENV_FILE) -> tuple[int, int]:
    """Add a password for every variable the file lacks (the others are kept); (added, kept)."""
    present = read(path)
    values = {name: present.get(name) or secrets.token_urlsafe(24) for name in variables()}
    extra = {k: v for k, v in present.items() if k not in values}  # the user's own, kept as they are
    lines = [
        "# Passwords of deploy/compose.yaml, made by `python -m deploy.compose_env`: never commit this file.",
        *(f"{k}={v}" for k, v in {**values, **extra}.items()),
    ]
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(temporary, path)
    kept = sum(1 for name in variables() if present.get(name))
    return len(variables()) - kept, kept


def put_kafka_passwords(environment: Mapping[str, str], directory: Path) -> None:
    """The broker's principals' passwords from ``environment`` as ``deploy.credentials``' files."""
    names = [credentials.STACK_PRINCIPAL, *(p.name for p in PRINCIPALS)]
    missing = [kafka_variable(n) for n in names if not environment.get(kafka_variable(n))]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not set: run python -m deploy.compose_env (writes deploy/.env)")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for name in names:
        path = directory / f"kafka-{name}"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(environment[kafka_variable(name)])


def provision(bootstrap: str) -> None:
    from deploy.provision import create_topics, grant_access

    put_kafka_passwords(os.environ, credentials.secrets_dir())
    created, deleted = grant_access(bootstrap)
    print(f"access: {len(PRINCIPALS)} principals ({created} ACLs created, {deleted} deleted)")
    made = asyncio.run(create_topics(bootstrap))
    print(f"topics: {len(made)} created")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.compose_env", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    make = sub.add_parser("write", help="write the passwords that are missing (the default)")
    make.add_argument("--file", type=Path, default=ENV_FILE)
    run = sub.add_parser("provision", help="in the Compose provision service: users, ACLs, topics")
    run.add_argument("--bootstrap", default=os.environ.get("BILLING_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092"))
    args = parser.parse_args()
    if args.command == "provision":
        provision(args.bootstrap)
    else:
        path = getattr(args, "file", ENV_FILE)
        added, kept = write(path)
        print(f"{path}: {added} passwords added, {kept} kept")
    sys.exit(0)


if __name__ == "__main__":
    main()
