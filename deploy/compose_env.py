"""The passwords and signing keys of the Compose setup (deploy/compose.yaml), kept in deploy/.env, never in git.

``python -m deploy.compose_env`` (or ``... write [--file PATH]``) writes the file, mode 600: a
generated password for every Kafka principal of ``contracts.access`` plus the broker's own
``stack`` and ``controller`` (``KAFKA_PASSWORD_<PRINCIPAL>``), and for every PostgreSQL role, each
service's and the ``postgres`` superuser (``PG_PASSWORD_<ROLE>``), a master secret for every
principal that signs commands (``SIGNING_KEY_<PRINCIPAL>``, its 32 bytes in base64), and each
command-reading service's registry of the keys toward it derived from them
(``TRUSTED_KEYS_<SERVICE>``, the JSON of ``deploy.credentials``' ``trusted-keys-<service>.json``
in base64; a secret like the passwords). Passwords and keys already in the file are kept, so
running it again after a principal is added only adds that one; the registries follow the keys
(rewritten each time).

``python -m deploy.compose_env start -- COMMAND ...`` is how a worker starts in Compose: it writes
its ``TRUSTED_KEYS`` and ``SIGNING_KEY`` (base64, from its environment) to files on its tmpfs that
only its own user reads, points ``BILLING_TRUSTED_KEYS_FILE`` / ``BILLING_SIGNING_KEY_FILE`` at
them and runs COMMAND (a bind mount would keep the host's owner, which the image's user 10001 is not).

``python -m deploy.compose_env provision --bootstrap kafka:9092`` is the Compose ``provision``
service's command: it gets the whole file as its environment (it sets every principal's SCRAM
credential), writes the Kafka passwords where ``deploy.credentials`` reads them
(``$STACK_DIR/secrets``, a tmpfs in the container), and then does what ``python -m
deploy.provision`` does: the SCRAM users, exactly the registry's ACLs, the topics.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from contracts.access import PRINCIPALS, SERVICES, trusted_keys
from deploy import credentials

ENV_FILE = Path(__file__).resolve().parent / ".env"
KEYS_DIR = Path("/tmp/billing-keys")
"""Where ``start`` writes a worker's keys: the container's tmpfs."""


def kafka_variable(principal: str) -> str:
    return "KAFKA_PASSWORD_" + principal.upper().replace("-", "_")


def pg_variable(role: str) -> str:
    return "PG_PASSWORD_" + role.upper().replace("-", "_")


def signing_variable(principal: str) -> str:
    return "SIGNING_KEY_" + principal.upper().replace("-", "_")


def trusted_variable(service: str) -> str:
    return "TRUSTED_KEYS_" + service.upper().replace("-", "_")


def command_readers() -> list[str]:
    """The services that trust some signer's key: they read a command topic."""
    return [s.name for s in SERVICES if trusted_keys(s)]


def password_variables() -> list[str]:
    return [kafka_variable(p) for p in credentials.kafka_principals()] + [
        pg_variable(r) for r in credentials.pg_roles()
    ]


def variables() -> list[str]:
    """Every variable of the Compose setup, in the file's order."""
    return [
        *password_variables(),
        *(signing_variable(p) for p in credentials.signers()),
        *(trusted_variable(s) for s in command_readers()),
    ]


def _b64(text: bytes | str) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def read(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return {m[1]: m[2] for line in path.read_text().splitlines() if (m := _LINE.match(line.strip()))}


def write(path: Path = ENV_FILE) -> tuple[int, int]:
    """Add a password for every variable the file lacks (the others are kept); (added, kept)."""
    present = read(path)
    values = {name: present.get(name) or secrets.token_urlsafe(24) for name in password_variables()}
    masters = {}
    for principal in credentials.signers():
        name = signing_variable(principal)
        master = present.get(name)
        if master and len(base64.b64decode(master)) != 32:  # an older file's Ed25519 PEM: a new secret
            master = None
        values[name] = master or _b64(credentials.new_signing_key())
        masters[principal] = base64.b64decode(values[name])
    for service in command_readers():
        values[trusted_variable(service)] = _b64(credentials.registry(service, masters))
    extra = {k: v for k, v in present.items() if k not in values}  # the user's own, kept as they are
    lines = [
        "# Passwords and keys of deploy/compose.yaml, made by `python -m deploy.compose_env`: never commit this file.",
        *(f"{k}={v}" for k, v in {**values, **extra}.items()),
    ]
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(temporary, path)
    kept = sum(1 for name in variables() if present.get(name) == values[name])
    return len(variables()) - kept, kept


def start_environment(environment: Mapping[str, str], directory: Path = KEYS_DIR) -> dict[str, str]:
    """``environment`` with its base64 ``TRUSTED_KEYS`` / ``SIGNING_KEY`` written to files (mode 600)
    in ``directory`` and replaced by the ``BILLING_*_FILE`` settings that name them."""
    env = dict(environment)
    files = {"TRUSTED_KEYS": ("trusted-keys.json", "BILLING_TRUSTED_KEYS_FILE")}
    files["SIGNING_KEY"] = ("signing-key", "BILLING_SIGNING_KEY_FILE")
    for variable, (name, setting) in files.items():
        value = env.pop(variable, None)
        if not value:
            continue
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / name
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64decode(value, validate=True))
        env[setting] = str(path)
    return env


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
    begin = sub.add_parser("start", help="a worker's start: write its keys to files, then run COMMAND")
    begin.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "provision":
        provision(args.bootstrap)
    elif args.command == "start":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("start needs a command after --")
        os.execvpe(cmd[0], cmd, start_environment(os.environ))
    else:
        path = getattr(args, "file", ENV_FILE)
        added, kept = write(path)
        print(f"{path}: {added} passwords and keys added, {kept} kept")
    sys.exit(0)


if __name__ == "__main__":
    main()
