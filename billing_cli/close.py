"""``billing close-cycles``: publish ``CloseBillingCycles``, signed with the operator's key, and
follow the close in cycle close's own records (its ``queries``) until every requested invoice is
issued. A trigger cycle close refuses (``CommandRejected`` on ``billing.cycles``: a role the key
may not claim, an invalid date) ends the command with exit code 1 and the reason."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, date, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from billing_cli.output import console, errors, print_json
from billing_cli.settings import CliSettings
from contracts import Actor
from contracts.messages import CloseBillingCycles
from contracts.topics import BILLING_COMMANDS, BILLING_CYCLES

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
    answers = Answers(settings, command.message_id) if wait else None
    try:
        if answers is not None:
            await answers.start()  # at the end of billing.cycles before the trigger leaves: no refusal is missed
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
        if answers is None:
            if as_json:
                print_json({"trigger_id": command.message_id, "as_of": as_of})
            return 0
        return await follow(command.message_id, as_of, timeout_s, as_json, answers)
    finally:
        if answers is not None:
            await answers.stop()


class Answers:
    """Cycle close's answers to one trigger on ``billing.cycles``: a consumer with no group, every
    partition from its end, so it commits nothing and takes no partition from the services."""

    def __init__(self, settings: CliSettings, trigger_id: uuid.UUID) -> None:
        self.trigger_id = str(trigger_id)
        self.consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, **settings.kafka_options())

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer._client.force_metadata_update()  # the topic's partitions are known after it
        partitions = [
            TopicPartition(BILLING_CYCLES.name, p)
            for p in self.consumer.partitions_for_topic(BILLING_CYCLES.name) or ()
        ]
        if not partitions:
            raise KafkaError(f"topic {BILLING_CYCLES.name} not found (python -m deploy.provision creates it)")
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:  # positions resolved now, before the trigger is sent
            await self.consumer.position(tp)

    async def refusal(self, wait_s: float) -> dict[str, str] | None:
        """The ``CommandRejected`` answering the trigger, if one arrives within ``wait_s``."""
        batches = await self.consumer.getmany(timeout_ms=int(wait_s * 1000))
        for records in batches.values():
            for record in records:
                if self.trigger_id.encode() not in (record.value or b""):
                    continue  # cheap filter: most records are other accounts' closes
                try:
                    answer = json.loads(record.value or b"")
                except ValueError:
                    continue  # not the contract's: its dead letter is the producer's business
                if (
                    isinstance(answer, dict)
                    and answer.get("type") == "CommandRejected"
                    and answer.get("causation_id") == self.trigger_id
                ):
                    return {"reason_code": str(answer.get("reason_code")), "reason": str(answer.get("reason"))}
        return None

    async def stop(self) -> None:
        await self.consumer.stop()


async def follow(trigger_id: uuid.UUID, as_of: date, timeout_s: float, as_json: bool, answers: Answers) -> int:
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
                refused = await answers.refusal(POLL_S)  # also the pause between two looks at the progress
                if refused is not None:
                    if as_json:
                        print_json({"trigger_id": trigger_id, "as_of": as_of, "refused": refused})
                    errors.print(f"[bold red]refused[/] ({refused['reason_code']}): {refused['reason']}")
                    return 1
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
