"""The local stack's signing keys for the clients that send commands (``contracts/signing.md``).

``signer_for("admin-ui")`` signs as the admin UI with the master secret the stack generated for it
(``$STACK_DIR/secrets/signing-admin-ui.key``); ``deploy/client.py``'s ``Bus`` signs every command
it sends with the key of the principal it sends as.

``python -m deploy.signing --measure`` prints, in one run, what signing and checking one command
cost beside reading its JSON into its contract model and, when the stack's PostgreSQL is up, beside
usage metering's whole handling of it (the batch processor, one command per transaction), in wall
time and in the process's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
import timeit
import uuid
from datetime import UTC, date, datetime
from datetime import time as clock_time
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from contracts.access import receiver_of
from deploy.credentials import env_for, signing_key_file
from shared.runtime.authentication import Signer, TrustedKey, TrustedKeys

TOPIC = "metering.commands"
MIGRATIONS = Path(__file__).resolve().parents[1] / "services" / "usage_metering" / "migrations"


@functools.cache
def signer_for(principal: str) -> Signer:
    path = signing_key_file(principal)
    if not path.exists():
        raise RuntimeError(f"{principal} has no signing key ({path}): it may claim no role (contracts/access.py)")
    return Signer.from_file(principal, path)


def _cap_change(account: str, cap: Decimal, day: date = date(2026, 11, 20)) -> Any:
    from contracts import Actor
    from contracts.messages import SetCallingCreditCap

    return SetCallingCreditCap(
        message_id=uuid.uuid4(),
        account_id=account,
        occurred_at=datetime.combine(day, clock_time(12), UTC),
        actor=Actor(id="support-1", role="support"),
        cap=cap,
    )


def measure_steps(rounds: int = 5000) -> dict[str, float]:
    """Microseconds per command: sign, check (signature and role), and reading the command's JSON
    into its contract model, for scale (one of the cheapest steps of handling it)."""
    import secrets

    from contracts.messages import SetCallingCreditCap

    signer = Signer("support-tools", secrets.token_bytes(32))
    toward = signer.key_toward(receiver_of(TOPIC).name)
    keys = TrustedKeys({"support-tools": TrustedKey(toward, frozenset({"support"}))})
    command = _cap_change("acct-1234567890ab", Decimal("400.00"))
    value = command.model_dump_json().encode()
    key = command.account_id.encode()
    headers = signer.headers(TOPIC, key, value)
    assert keys.refusal(TOPIC, key, value, headers, "support") is None

    def per_call(fn: Any) -> float:
        return min(timeit.repeat(fn, number=rounds, repeat=3)) / rounds * 1e6

    return {
        "sign": per_call(lambda: signer.headers(TOPIC, key, value)),
        "check": per_call(lambda: keys.refusal(TOPIC, key, value, headers, "support")),
        "parse": per_call(lambda: SetCallingCreditCap.model_validate_json(value)),
    }


async def measure_handling(commands: int = 400, rounds: int = 4) -> dict[str, float]:
    """Microseconds per command of usage metering's whole handling of a signed ``SetCallingCreditCap``
    (parse, signature check, handler, inbox, outbox, commit: its batch processor, one command per
    transaction, as commands arrive one by one), against the stack's PostgreSQL, as usage metering:
    wall time (mostly the commit's WAL flush) and this process's CPU (what a worker spends). Rounds alternate without the check and with it (the same processor, its registry taken away),
    so both see the same machine. Leaves one account ``signing-measure-...`` with its cap changes
    (their outbox rows go out when the worker runs)."""
    from services.usage_metering.app import create_worker
    from services.usage_metering.settings import Settings

    own = env_for("usage-metering")  # as usage metering: its database role and its registry
    overrides: dict[str, Any] = {name.removeprefix("BILLING_").lower(): value for name, value in own.items()}
    settings = Settings(**overrides)
    parts = create_worker(settings)  # wired as the worker is; nothing of it is started
    engine = parts.probes.engine
    try:
        return await _handling(engine, parts.processor, settings, commands, rounds)
    finally:
        await engine.dispose()


async def _handling(engine: Any, processor: Any, settings: Any, commands: int, rounds: int) -> dict[str, float]:
    from contracts import messages as m
    from shared.db import upgrade_to_head, wait_for_database
    from shared.runtime.codec import Record
    from shared.runtime.retention import Retention

    await wait_for_database(engine, timeout_s=10)
    await upgrade_to_head(engine, MIGRATIONS)
    retention = Retention(
        "usage-metering",
        settings.database_dsn,
        settings.inbox_retention_days,
        settings.dead_letter_retention_days,
        settings.retention_interval_s,
    )
    await retention.run_once()  # this week's inbox partition exists
    keys, signer = processor.trusted_keys, signer_for("support-tools")
    account = f"signing-measure-{uuid.uuid4().hex[:12]}"
    opened = m.AccountOpened(
        message_id=uuid.uuid4(),
        account_id=account,
        occurred_at=datetime(2026, 11, 1, tzinfo=UTC),
        billing_day=1,
        currency="USD",
    )
    offset = [0]

    def record(topic: str, message: Any, signed: bool) -> Record:
        key, value = message.account_id.encode(), message.model_dump_json().encode()
        headers = tuple(signer.headers(topic, key, value)) if signed else ()
        offset[0] += 1
        return Record(topic, 0, offset[0], key, value, headers)

    await processor.process([record("platform.accounts", opened, signed=False)])
    for j in range(commands // 4):  # warm-up (connections, prepared statements), not counted
        await processor.process([record(TOPIC, _cap_change(account, Decimal(260 + j)), signed=True)])
    totals = {"handling": 0.0, "handling, unchecked": 0.0, "handling CPU": 0.0, "handling CPU, unchecked": 0.0}
    last_cap = Decimal(0)
    for i in range(rounds * 2):
        checked = i % 2 == 1  # the last round is checked: the cap read below proves it was believed
        processor.trusted_keys = keys if checked else None
        caps = [Decimal(300 + j + i * commands) for j in range(commands)]
        records = [record(TOPIC, _cap_change(account, cap), signed=True) for cap in caps]
        started, cpu = time.perf_counter(), time.process_time()
        for one in records:
            await processor.process([one])
        totals["handling" if checked else "handling, unchecked"] += time.perf_counter() - started
        totals["handling CPU" if checked else "handling CPU, unchecked"] += time.process_time() - cpu
        last_cap = caps[-1]
    processor.trusted_keys = keys
    # A measure of refused commands would say nothing: the last cap must be the account's now.
    async with engine.connect() as conn:
        cap = await conn.scalar(sa.text("select cap from accounts where account_id = :a"), {"a": account})
    if cap is None or Decimal(cap) != last_cap:
        raise RuntimeError(f"the measured commands were not applied (cap {cap}): are the keys the stack's?")
    return {step: total / (rounds * commands) * 1e6 for step, total in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.signing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="print the cost of signing and checking a command")
    parser.add_argument("--commands", type=int, default=400, help="commands per handling round (default 400)")
    args = parser.parse_args()
    if not args.measure:
        parser.print_help()
        return
    steps = measure_steps()
    for step, us in steps.items():
        print(f"{step:20} {us:9.1f} µs per command")
    try:
        handling = asyncio.run(measure_handling(args.commands))
    except Exception as exc:  # no stack here: the steps above still stand
        print(f"handling: not measured, the stack is not reachable ({type(exc).__name__}: {exc})")
        return
    for step, us in handling.items():
        what = "process CPU" if "CPU" in step else "wall time"
        print(f"{step:24} {us:9.1f} µs per command (usage metering, one command per transaction, {what})")
    print(
        f"the check is {steps['check'] / handling['handling CPU'] * 100:.1f} % of a command's handling CPU "
        f"({steps['check'] / handling['handling'] * 100:.1f} % of its wall time); with it minus without it: "
        f"{handling['handling CPU'] - handling['handling CPU, unchecked']:+.1f} µs CPU, "
        f"{handling['handling'] - handling['handling, unchecked']:+.1f} µs wall"
    )


if __name__ == "__main__":
    main()
