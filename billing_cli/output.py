"""How ``billing`` prints: Rich tables for people, JSON (``--json``) for scripts."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal and console.width == 80:  # a log or a pipe: no 80-column tables unless COLUMNS says so
    console = Console(highlight=False, soft_wrap=True, width=160)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def jsonable(value: Any) -> Any:
    """Dataclasses, Decimals (as strings, as on the topics), dates, UUIDs and bytes into JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in dir(type(value)):  # derived fields (e.g. ``available``) belong to what a script reads
            if isinstance(getattr(type(value), name, None), property):
                fields[name] = jsonable(getattr(value, name))
        return fields
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2), flush=True)


def fail(message: str, code: int = 1) -> None:
    """Say why on stderr and leave with ``code`` (1: refused or not found, 2: bad usage)."""
    import typer

    errors.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
