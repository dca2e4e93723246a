"""``billing dlq``: the dead letters every service keeps, listed, shown and re-driven.

A dead letter is named ``<service>-<id>`` (``usage_metering-7``): each service keeps its own
(``dead_letters`` in its database), and a topic read by several services may have one in each.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from billing_cli.output import console, fail, print_json
from shared.runtime.dead_letters import DeadLetter, DeadLetters

app = typer.Typer(help="Dead letters: what no service could process, and re-driving it.", no_args_is_help=True)

SERVICES = ("license_orders", "usage_metering", "cycle_close")
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
Since = Annotated[
    datetime | None,
    typer.Option(
        help="Only those failed at or after this time (ISO 8601).",
        formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
    ),
]


def _queries(service: str) -> Any:
    """That service's own queries (each reads only its own database, with its own settings)."""
    if service == "license_orders":
        from services.license_orders import queries as lo

        return lo.connect()
    if service == "usage_metering":
        from services.usage_metering import queries as um

        return um.connect()
    from services.cycle_close import queries as cc

    return cc.connect()


def parse_ref(ref: str) -> tuple[str, int]:
    service, _, number = ref.rpartition("-")
    if service not in SERVICES or not number.isdigit():
        raise typer.BadParameter(f"{ref!r}: a dead letter is named <service>-<id>, e.g. usage_metering-7")
    return service, int(number)


async def _each(work: Any, services: tuple[str, ...] = SERVICES) -> list[Any]:
    opened = [_queries(s) for s in services]
    try:
        return list(await asyncio.gather(*(work(q.dead_letters) for q in opened)))
    finally:
        await asyncio.gather(*(q.close() for q in opened))


def _document(letter: DeadLetter) -> dict[str, Any]:
    try:
        value: Any = json.loads(letter.payload)
    except ValueError:
        value = letter.payload.decode("utf-8", "replace")
    return {
        "ref": letter.ref,
        "service": letter.service,
        "id": letter.id,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "error": letter.error,
        "failed_at": letter.failed_at,
        "value": value,
    }


@app.command("list")
def list_(
    topic: Annotated[str | None, typer.Argument(help="Only dead letters of this (original) topic.")] = None,
    since: Since = None,
    limit: Annotated[int, typer.Option(help="At most this many per service, newest first.", min=1)] = 50,
    json: Json = False,
) -> None:
    """Dead letters of every service, newest first."""

    async def work(letters: DeadLetters) -> list[DeadLetter]:
        return await letters.list(topic, since, limit)

    found = sorted(
        (letter for per_service in asyncio.run(_each(work)) for letter in per_service),
        key=lambda d: d.failed_at,
        reverse=True,
    )
    if json:
        print_json([{k: v for k, v in _document(d).items() if k != "value"} for d in found])
        return
    if not found:
        console.print("No dead letters.")
        return
    table = Table(title="Dead letters")
    for column in ("ref", "topic", "partition/offset", "failed at", "error"):
        table.add_column(column)
    for d in found:
        table.add_row(
            d.ref, d.topic, f"{d.partition}/{d.offset}", d.failed_at.isoformat(timespec="seconds"), d.error[:80]
        )
    console.print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="The dead letter, <service>-<id> (see `billing dlq list`).")],
    raw: Annotated[
        bool, typer.Option("--raw", help="Print only the original value, as it arrived (to fix and re-drive).")
    ] = False,
    json: Json = False,
) -> None:
    """One dead letter: where it came from, why it failed, its original value."""
    service, letter_id = parse_ref(ref)

    async def work(letters: DeadLetters) -> DeadLetter | None:
        return await letters.get(letter_id)

    [letter] = asyncio.run(_each(work, (service,)))
    if letter is None:
        fail(f"no dead letter {ref}")
    if raw:
        typer.echo(letter.payload.decode("utf-8", "replace"))
        return
    document = _document(letter)
    if json:
        print_json(document)
        return
    for key in ("ref", "topic", "partition", "offset", "failed_at", "error"):
        console.print(f"[bold]{key}[/]: {document[key]}")
    console.print("[bold]value[/]:")
    console.print_json(data=document["value"]) if not isinstance(document["value"], str) else console.print(
        document["value"]
    )
