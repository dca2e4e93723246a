"""``billing alerts tail``: follow ``metering.alerts`` live.

A consumer of its own with no group: it is assigned every partition and starts at the end (or
``--since`` a time), so it never commits offsets nor takes partitions from anyone.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition

from billing_cli.output import console, errors
from billing_cli.settings import CliSettings
from contracts.topics import METERING_ALERTS

app = typer.Typer(help="Calling-credit alerts (metering.alerts).", no_args_is_help=True)


def describe(alert: dict[str, Any]) -> str:
    kind = alert.get("type", "?")
    details = {
        "CallingCreditThresholdReached": lambda: f"{alert.get('threshold_percent')} % reached",
        "CallingBlocked": lambda: "calling blocked",
        "CallingUnblocked": lambda: f"calling unblocked ({alert.get('reason')})",
        "CallingCreditCapChanged": lambda: f"cap changed to {alert.get('cap')}",
        "CommandRejected": lambda: f"{alert.get('command_type')} refused: {alert.get('reason_code')}",
    }.get(kind, lambda: kind)()
    money = f"accrued {alert['accrued']} of cap {alert.get('cap', '?')}" if "accrued" in alert else ""
    return f"{alert.get('occurred_at', '')}  {alert.get('account_id', '')}  {details}  {money}".rstrip()


async def follow(account: str | None, since: datetime | None, limit: int | None, as_json: bool) -> int:
    settings = CliSettings()
    consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, **settings.kafka_options())
    await consumer.start()
    shown = 0
    try:
        await (
            consumer._client.force_metadata_update()
        )  # the topic's partitions are known after it (as deploy/client.py)
        partitions = [
            TopicPartition(METERING_ALERTS.name, p) for p in consumer.partitions_for_topic(METERING_ALERTS.name) or ()
        ]
        if not partitions:
            errors.print(
                f"[bold red]error:[/] topic {METERING_ALERTS.name} not found (python -m deploy.provision creates it)"
            )
            return 1
        consumer.assign(partitions)
        if since is None:
            await consumer.seek_to_end(*partitions)
        else:
            found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
            for tp in partitions:
                if found.get(tp) is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, found[tp].offset)
        for tp in partitions:  # positions resolved now: nothing published from here on is missed
            await consumer.position(tp)
        # On stderr, so a script reading the alerts from stdout knows when nothing more is missed.
        errors.print(f"following {METERING_ALERTS.name}{f' for {account}' if account else ''} (Ctrl-C stops)")
        while limit is None or shown < limit:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    try:
                        alert = json.loads(record.value or b"")
                    except ValueError:
                        continue  # not the contract's: its dead letter is the producer's business
                    if not isinstance(alert, dict) or (account is not None and alert.get("account_id") != account):
                        continue
                    print(json.dumps(alert), flush=True) if as_json else console.print(describe(alert))
                    shown += 1
                    if limit is not None and shown >= limit:
                        return 0
    finally:
        await consumer.stop()
    return 0


@app.command()
def tail(
    account: Annotated[str | None, typer.Option(help="Only this account's alerts.")] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Start from this time (ISO 8601) instead of now.",
            formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many alerts.", min=1)] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per alert, as published.")] = False,
) -> None:
    """Follow metering.alerts live: thresholds reached, blocks and unblocks, cap changes."""
    try:
        code = asyncio.run(follow(account, since, limit, json_lines))
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
