"""``billing dlq``: the dead letters every service keeps, listed, shown and re-driven.

A dead letter is named ``<service>-<id>`` (``usage_metering-7``, ``alert_board-3``): each service
keeps its own (``dead_letters`` in its database, read through its ``queries.py``), and a topic
read by several services may have one in each. A service that has not yet started on its
database has no table yet: it has no dead letters, and the command says so on stderr.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import sqlalchemy.exc
import typer
from rich.table import Table

from billing_cli.output import console, errors, fail, print_json
from shared.runtime.dead_letters import DeadLetter, DeadLetters

app = typer.Typer(help="Dead letters: what no service could process, and re-driving it.", no_args_is_help=True)

SERVICES = ("license_orders", "usage_metering", "cycle_close", "alert_board")
UNDEFINED_TABLE = "42P01"
T = TypeVar("T")
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
    if service == "alert_board":
        from services.alert_board import queries as ab

        return ab.connect()
    from services.cycle_close import queries as cc

    return cc.connect()


async def _kept(service: str, work: Awaitable[T], nothing: T) -> T:
    """What ``work`` on a service's dead letters gives; ``nothing`` when the service has no table
    for them yet (it never started on this database, so it dead-lettered nothing)."""
    try:
        return await work
    except sqlalchemy.exc.ProgrammingError as exc:
        if _sqlstate(exc) != UNDEFINED_TABLE:
            raise
        errors.print(f"{service}: no dead letters (its database has no dead_letters table: it has not started yet)")
        return nothing


def _sqlstate(exc: sqlalchemy.exc.DBAPIError) -> str | None:
    original = exc.orig
    return getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)


def parse_ref(ref: str) -> tuple[str, int]:
    service, _, number = ref.rpartition("-")
    if service not in SERVICES or not number.isdigit():
        raise typer.BadParameter(f"{ref!r}: a dead letter is named <service>-<id>, e.g. usage_metering-7")
    return service, int(number)


async def _each(work: Any, nothing: Any, services: tuple[str, ...] = SERVICES) -> list[Any]:
    opened = {s: _queries(s) for s in services}
    try:
        return list(await asyncio.gather(*(_kept(s, work(q.dead_letters), nothing) for s, q in opened.items())))
    finally:
        await asyncio.gather(*(q.close() for q in opened.values()))


def _document(letter: DeadLetter) -> dict[str, Any]:
    try:
        value: Any = json.loads(letter.payload)
    except ValueError:
        value = letter.payload.decode("utf-8", "replace")
    account = value.get("account_id") if isinstance(value, dict) else None
    return {
        "ref": letter.ref,
        "account_id": account if isinstance(account, str) else None,
        "service": letter.service,
        "id": letter.id,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "error": letter.error,
        "failed_at": letter.failed_at,
        "replays": letter.replays,
        "redrive_of": None if letter.redrive_of is None else f"{letter.service}-{letter.redrive_of}",
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
        return await letters.find(topic, since, limit)

    found = sorted(
        (letter for per_service in asyncio.run(_each(work, [])) for letter in per_service),
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

    async def work(letters: DeadLetters) -> tuple[DeadLetter | None, list[Any]]:
        return await letters.get(letter_id), await letters.replays(letter_id)

    [(letter, replays)] = asyncio.run(_each(work, (None, []), (service,)))
    if letter is None:
        fail(f"no dead letter {ref}")
    if raw:
        typer.echo(letter.payload.decode("utf-8", "replace"))
        return
    document = _document(letter) | {"replay_log": replays}
    if json:
        print_json(document)
        return
    for key in ("ref", "topic", "partition", "offset", "failed_at", "error", "redrive_of"):
        if document[key] is not None:
            console.print(f"[bold]{key}[/]: {document[key]}")
    for r in replays:
        amended = ", value fixed by hand" if r.amended else ""
        console.print(
            f"[bold]re-driven[/] {r.replayed_at.isoformat(timespec='seconds')} by {r.replayed_by}{amended}: "
            f"partition {r.to_partition} offset {r.to_offset}"
        )
    console.print("[bold]value[/]:")
    console.print_json(data=document["value"]) if not isinstance(document["value"], str) else console.print(
        document["value"]
    )


def _record_key(value: bytes) -> bytes | None:
    """The record key the contract gives a message: its ``account_id`` (None when unreadable)."""
    try:
        document = json.loads(value)
    except ValueError:
        return None
    account = document.get("account_id") if isinstance(document, dict) else None
    return account.encode() if isinstance(account, str) else None


def _claimed_role(value: bytes) -> str | None:
    """The ``actor.role`` a command claims (None when unreadable)."""
    try:
        document = json.loads(value)
    except ValueError:
        return None
    actor = document.get("actor") if isinstance(document, dict) else None
    role = actor.get("role") if isinstance(actor, dict) else None
    return role if isinstance(role, str) else None


class NotOursToSend(Exception):
    """A dead-lettered command claiming a role the re-driver's key may not claim."""


@app.command()
def replay(
    refs: Annotated[list[str] | None, typer.Argument(help="Dead letters to re-drive, <service>-<id>.")] = None,
    topic: Annotated[
        str | None, typer.Option(help="Re-drive every dead letter of this topic not re-driven yet.")
    ] = None,
    since: Since = None,
    again: Annotated[bool, typer.Option("--again", help="Re-drive even those re-driven before.")] = False,
    payload: Annotated[
        typer.FileBinaryRead | None,
        typer.Option(
            help="The value to publish instead of the dead letter's (fixed by hand; - reads stdin). One REF only."
        ),
    ] = None,
    actor: Annotated[
        str | None, typer.Option(help="Who re-drives (recorded; default: the operator's login name).")
    ] = None,
    json: Json = False,
) -> None:
    """Re-drive dead letters to their original topic, once each (--again for more), recording when and by whom.

    A re-driven record that fails again becomes a new dead letter (shown as a re-drive of this
    one); nothing is re-driven by itself, so a message that keeps failing cannot loop. A command
    goes out signed with the operator's key (dead letters keep no record headers, so not its
    sender's signature): one claiming a role other than operator is refused, its sender sends it again.
    """
    from billing_cli.settings import CliSettings
    from contracts.access import BY_PRINCIPAL
    from contracts.topics import COMMAND_TOPICS

    if bool(refs) == bool(topic):
        fail("name the dead letters (REF ...) or give --topic, not both", code=2)
    if since is not None and topic is None:
        fail("--since goes with --topic", code=2)
    if payload is not None and len(refs or ()) != 1:
        fail("--payload replaces the value of exactly one dead letter", code=2)
    wanted = [parse_ref(ref) for ref in refs or ()]
    fixed = payload.read() if payload is not None else None
    settings = CliSettings()
    by = actor or settings.operator_id

    async def work() -> tuple[list[Any], list[str], list[str]]:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **settings.kafka_options())
        await producer.start()
        done: list[Any] = []
        refused: list[str] = []
        missing: list[str] = []

        signer = settings.signer()
        claims = BY_PRINCIPAL[signer.key_id].claims if signer and signer.key_id in BY_PRINCIPAL else ()

        async def publish(letter: DeadLetter, value: bytes) -> tuple[int, int]:
            headers = [("billing-redrive-of", letter.ref.encode()), ("billing-redriven-by", by.encode())]
            if letter.topic in COMMAND_TOPICS:
                # A dead letter keeps no record headers, so a re-driven command is the operator's:
                # signed with its key, believed only for a role that key may claim (contracts/signing.md).
                role = _claimed_role(value)
                if role is not None and role not in claims:
                    raise NotOursToSend(
                        f"it claims role {role!r}, which the {signer.key_id if signer else 'unsigned'} key may not "
                        "claim; its sender sends it again"
                    )
                if signer is not None:
                    headers += signer.headers(letter.topic, _record_key(value), value)
            sent = await producer.send_and_wait(letter.topic, value, key=_record_key(value), headers=headers)
            return sent.partition, sent.offset

        from shared.runtime.dead_letters import AlreadyRedriven

        services = tuple(dict.fromkeys(s for s, _ in wanted)) if wanted else SERVICES
        opened = {s: _queries(s) for s in services}
        try:
            if topic is not None:
                for service, queries in opened.items():
                    found = await _kept(
                        service, queries.dead_letters.find(topic, since, 10_000, None if again else False), []
                    )
                    wanted.extend((service, letter.id) for letter in reversed(found))
            for service, letter_id in wanted:
                letters: DeadLetters = opened[service].dead_letters
                try:
                    replayed = await _kept(service, letters.redrive(letter_id, by, publish, fixed, again), None)
                except AlreadyRedriven as exc:
                    refused.append(f"{service}-{letter_id}: {exc}; --again re-drives it once more")
                    continue
                except NotOursToSend as exc:
                    refused.append(f"{service}-{letter_id}: {exc}")
                    continue
                if replayed is None:
                    missing.append(f"{service}-{letter_id}")
                else:
                    done.append(replayed)
        finally:
            await asyncio.gather(*(q.close() for q in opened.values()))
            await producer.stop()
        return done, refused, missing

    done, refused, missing = asyncio.run(work())
    if json:
        print_json({"replayed": done, "refused": refused, "not_found": missing})
    else:
        for r in done:
            amended = " (value fixed by hand)" if r.amended else ""
            console.print(f"re-drove {r.dead_letter}{amended} to partition {r.to_partition} offset {r.to_offset}")
        for line in refused:
            console.print(f"[bold red]refused[/] {line}")
        for ref in missing:
            console.print(f"[bold red]not found[/] {ref}")
        if not (done or refused or missing):
            console.print("Nothing to re-drive.")
    if refused or missing:
        raise typer.Exit(1)
