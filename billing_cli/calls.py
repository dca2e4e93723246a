"""``billing calls``: usage metering's calls ledger by month, and archiving the old months.

The ledger (``calls``) is partitioned by the month its cycles start in; a month whose every cycle
is sealed can be archived: its partition is detached (a table of its own, ``calls_YYYYMM``) to be
dumped and dropped. A call stays charged once, ever (``call_ids`` is never archived), and the
meters of those cycles stay as they were (their snapshots hold all their calls). Asked through
usage metering's own package (``services.usage_metering.queries``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import typer
from rich.table import Table

from billing_cli.output import console, fail, print_json

app = typer.Typer(
    help="The calls ledger by month: archive the months whose cycles are all sealed.", no_args_is_help=True
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]


@app.command()
def archive(
    before: Annotated[
        datetime,
        typer.Option("--before", formats=["%Y-%m-%d"], help="Archive the months that ended on or before this date."),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say which months would be archived.")] = False,
    actor: Annotated[
        str | None, typer.Option(help="Who archives (recorded; default: the operator's login name).")
    ] = None,
    json: Json = False,
) -> None:
    """Detach the calls partitions of the months ended by --before whose every cycle is sealed.

    Each detached table (named in the output) holds its month's calls until it is dumped and
    dropped: pg_dump -t calls_YYYYMM, then DROP TABLE calls_YYYYMM. A month with a cycle still
    open (an account whose open cycle starts in it or before) is kept and said so.
    """
    from billing_cli.settings import CliSettings
    from services.usage_metering import queries

    by = actor or CliSettings().operator_id

    async def work() -> Any:
        metering = queries.connect()
        try:
            return await metering.archive_calls(before.date(), by, dry_run)
        finally:
            await metering.close()

    try:
        done = asyncio.run(work())
    except (RuntimeError, asyncpg.PostgresError) as exc:  # a check failed, or a lock not had in time: nothing archived
        fail(f"nothing archived: {exc}")
    if json:
        print_json(done)
        return
    archived = {m.month for m in done.archived}
    table = Table(title=f"Calls by month ended on or before {before.date()}" + (" (dry run)" if dry_run else ""))
    for column in ("month", "calls", "partition", "outcome"):
        table.add_column(column, justify="right" if column == "calls" else "left")
    for month in done.months:
        if month.month in archived:
            outcome = "archived: detached"
        elif not month.archivable:
            outcome = f"kept: {month.open_cycles} accounts' cycles not sealed"
        else:
            outcome = "would be archived" if dry_run else "kept"
        partition = next((m.partition for m in done.archived if m.month == month.month), month.partition)
        table.add_row(f"{month.month:%Y-%m}", str(month.calls), partition or "(in calls_default)", outcome)
    if done.months:
        console.print(table)
    else:
        console.print(f"No month of calls ended on or before {before.date()} that is not archived yet.")
    if done.archived:
        names = " ".join(m.partition or "" for m in done.archived)
        console.print(f"Detached {len(done.archived)} partitions; dump then drop them: {names}")


@app.command()
def archived(json: Json = False) -> None:
    """The months archived so far: their detached table, how many calls, when and by whom."""
    from services.usage_metering import queries

    async def work() -> Any:
        metering = queries.connect()
        try:
            return await metering.archived_calls()
        finally:
            await metering.close()

    found = asyncio.run(work())
    if json:
        print_json(found)
        return
    if not found:
        console.print("No month of calls archived yet.")
        return
    table = Table(title="Archived months of calls")
    for column in ("month", "partition", "calls", "archived at", "by"):
        table.add_column(column, justify="right" if column == "calls" else "left")
    for m in found:
        table.add_row(f"{m.month:%Y-%m}", m.partition, str(m.calls), f"{m.archived_at:%Y-%m-%d %H:%M}", m.archived_by)
    console.print(table)
