"""``billing close-cycles``: publish ``CloseBillingCycles`` and follow the close in cycle close's
own records (its ``queries``) until every requested invoice is issued."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, date, datetime

from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from billing_cli.output import console, errors, print_json
from billing_cli.settings import CliSettings
from contracts import Actor
from contracts.messages import CloseBillingCycles
from contracts.topics import BILLING_COMMANDS

POLL_S = 0.5


async def close_cycles(
    as_of: date,
    account_ids: list[str] | None,
    actor: str | None,
    role: str,
    scope: str,
    wait: bool,
    timeout_s: float,
    as_json: bool,
) -> int:
    settings = CliSettings()
    command = CloseBillingCycles(
        message_id=uuid.uuid4(),
        account_id=scope,
        occurred_at=datetime.now(UTC),
        actor=Actor(id=actor or settings.operator_id, role=role),
        as_of=as_of,
        account_ids=account_ids,
    )
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **settings.kafka_options())
    await producer.start()
    try:
        value, key = command.model_dump_json().encode(), scope.encode()
        signer = settings.signer()  # its principal's key (BILLING_SIGNING_KEY_FILE); unsigned, it is refused
        headers = signer.headers(BILLING_COMMANDS.name, key, value) if signer else []
        await producer.send_and_wait(BILLING_COMMANDS.name, value, key=key, headers=headers)
    finally:
        await producer.stop()
    if not as_json:
        console.print(f"close-cycles as of {as_of}: trigger {command.message_id} sent")
    if not wait:
        if as_json:
            print_json({"trigger_id": command.message_id, "as_of": as_of})
        return 0
    return await follow(command.message_id, as_of, timeout_s, as_json)


async def follow(trigger_id: uuid.UUID, as_of: date, timeout_s: float, as_json: bool) -> int:
    from services.cycle_close import queries

    closes = queries.connect()
    started = time.monotonic()
    # A bar on a terminal; elsewhere (a cron job's log, a pipe) a plain line each time it moves.
    bar = Progress(
        TextColumn("closing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("invoices"),
        TimeElapsedColumn(),
        console=console,
        disable=as_json or not console.is_terminal,
    )
    task = bar.add_task("close", total=None)
    last = None
    try:
        with bar:
            while True:
                progress = await closes.close_progress(trigger_id)
                bar.update(task, completed=progress.invoiced, total=progress.requested if progress.settled else None)
                line = (progress.invoiced, progress.requested, progress.settled)
                if line != last and not as_json and not console.is_terminal:
                    pending = "" if progress.settled else " (still requesting)"
                    console.print(f"  {progress.invoiced}/{progress.requested} invoices issued{pending}")
                last = line
                if progress.done:
                    break
                if time.monotonic() - started > timeout_s:
                    errors.print(f"timed out after {timeout_s} s (is the cycle-close worker running?)")
                    return 1
                await asyncio.sleep(POLL_S)
    finally:
        await closes.close()
    elapsed = time.monotonic() - started
    if as_json:
        print_json(
            {
                "trigger_id": trigger_id,
                "as_of": as_of,
                "accounts_closed": progress.accounts,
                "invoices_issued": progress.invoiced,
                "total_billed": progress.billed,
                "seconds": round(elapsed, 1),
            }
        )
    else:
        console.print(
            f"done in {elapsed:.1f} s: accounts closed {progress.accounts}, invoices issued {progress.invoiced}, "
            f"total billed {progress.billed} USD"
        )
    return 0
