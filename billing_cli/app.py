"""The ``billing`` command: one entry point for what operators do.

Exit codes: 0 done, 1 refused or not found, 2 bad usage (click's own for a wrong option).
Every command takes ``--json`` for scripts; without it, Rich tables for people.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from billing_cli import alerts, calls, close, dlq
from billing_cli.output import console, fail, print_json

T = TypeVar("T")

app = typer.Typer(
    name="billing",
    help="Operate license billing: close cycles, prices, accounts, invoices, alerts, dead letters, the calls ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(alerts.app, name="alerts")
app.add_typer(dlq.app, name="dlq")
app.add_typer(calls.app, name="calls")

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]


def run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # type: ignore[arg-type]


@app.command("close-cycles")
def close_cycles(
    as_of: Annotated[
        datetime, typer.Option("--as-of", formats=["%Y-%m-%d"], help="Close every cycle ending on or before this date.")
    ],
    account: Annotated[list[str] | None, typer.Option("--account", help="Only this account (repeatable).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who asks (default: the operator's login name).")] = None,
    role: Annotated[str, typer.Option(help="operator, or service for the scheduler's cron job.")] = "operator",
    scope: Annotated[str, typer.Option(help="The command's account_id (its record key).")] = "platform",
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the close until every invoice is issued.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow before giving up (exit 1).")] = 600.0,
    json: Json = False,
) -> None:
    """Trigger a cycle close (what the cron job calls), then follow it: progress and a summary."""
    if role not in ("operator", "service"):
        fail(f"--role must be operator or service, not {role!r}", code=2)
    outcome = run(lambda: close.close_cycles(as_of.date(), account or None, actor, role, scope, wait, timeout, json))
    raise typer.Exit(outcome)


def _money(text: str) -> Decimal:
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not an amount, e.g. 15.00") from None
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise typer.BadParameter(f"{text!r}: a price is a non-negative amount with at most 2 decimal places")
    return amount


@app.command()
def prices(
    product: Annotated[str | None, typer.Argument(help="Set this product's price (with UNIT_PRICE).")] = None,
    unit_price: Annotated[str | None, typer.Argument(help="The new monthly unit price, e.g. 16.00.")] = None,
    account: Annotated[str | None, typer.Option(help="That account's prices (or set its own price).")] = None,
    json: Json = False,
) -> None:
    """Show the price catalog (or an account's prices); with PRODUCT PRICE, change one."""
    from services.license_orders import queries

    if (product is None) != (unit_price is None):
        fail("give both PRODUCT and UNIT_PRICE to change a price, or neither to show them", code=2)
    price = _money(unit_price) if unit_price is not None else None

    async def work() -> list[queries.Price]:
        orders = queries.connect()
        try:
            if product is not None and price is not None:
                await orders.set_price(product, price, account)
            return await orders.prices(account)
        finally:
            await orders.close()

    try:
        shown = run(work)
    except queries.UnknownProduct:
        fail(f"unknown product {product!r}")
    if json:
        print_json(shown)
        return
    table = Table(title=f"Prices for {account}" if account else "Price catalog")
    table.add_column("product")
    table.add_column("unit price", justify="right")
    if account:
        table.add_column("catalog", justify="right")
    for p in shown:
        cells = [p.product, f"{p.unit_price}{' *' if p.overridden else ''}"]
        table.add_row(*cells, *([str(p.catalog_price)] if account else []))
    console.print(table)
    if account and any(p.overridden for p in shown):
        console.print("* the account's own price")


@app.command()
def account(
    account_id: Annotated[str, typer.Argument(help="The account to show.")],
    invoices: Annotated[int, typer.Option(help="How many of its last invoices to show.", min=0)] = 3,
    json: Json = False,
) -> None:
    """An account as the services hold it: licenses, calling credits, blocked state, last invoices."""
    from services.cycle_close import queries as closing
    from services.license_orders import queries as orders
    from services.usage_metering import queries as metering

    async def work() -> tuple[Any, Any, Any, bool]:
        lo, um, cc = orders.connect(), metering.connect(), closing.connect()
        try:
            return await asyncio.gather(
                lo.account(account_id),
                um.account(account_id),
                cc.invoices(account_id, invoices),
                cc.account_known(account_id),
            )
        finally:
            await asyncio.gather(lo.close(), um.close(), cc.close())

    licenses, usage, last, billed = run(work)
    if licenses is None and usage is None and not billed:
        fail(f"no service knows account {account_id!r}")
    if json:
        print_json({"account_id": account_id, "licenses": licenses, "calling_credits": usage, "invoices": last})
        return
    if licenses is not None:
        table = Table(title=f"{account_id}: licenses, cycle {licenses.cycle_start} - {licenses.cycle_end}")
        for column in ("product", "purchased", "assigned", "scheduled for removal", "available"):
            table.add_column(column, justify="left" if column == "product" else "right")
        for p in licenses.products:
            table.add_row(p.product, str(p.purchased), str(p.assigned), str(p.scheduled_for_removal), str(p.available))
        console.print(table)
    else:
        console.print(f"{account_id}: license orders does not know this account (yet)")
    if usage is not None:
        state = "[bold red]BLOCKED[/]" if usage.blocked else "calling allowed"
        reached = ", ".join(f"{t} %" for t in usage.thresholds_reached) or "none"
        console.print(
            f"Calling credits {usage.cycle_start} - {usage.cycle_end}: accrued {usage.accrued} of cap {usage.cap} USD "
            f"({usage.calls} calls, over cap {usage.over_cap}); thresholds reached: {reached}; {state}"
        )
    else:
        console.print("Calling credits: usage metering does not know this account (yet)")
    _invoice_table(f"{account_id}: last invoices", last)


def _invoice_table(title: str, shown: list[Any]) -> None:
    if not shown:
        console.print("No invoices yet.")
        return
    table = Table(title=title)
    for column in ("invoice", "cycle", "issued", "lines", "total"):
        table.add_column(column, justify="right" if column in ("lines", "total") else "left")
    for v in shown:
        table.add_row(
            str(v.invoice_id), f"{v.cycle_start} - {v.cycle_end}", str(v.issued_on), str(len(v.lines)), f"{v.total} USD"
        )
    console.print(table)


@app.command()
def invoice(
    invoice_id: Annotated[str, typer.Argument(help="The invoice id (a UUID).")],
    json: Json = False,
) -> None:
    """One invoice with its lines, as issued."""
    from services.cycle_close import queries

    try:
        wanted = uuid.UUID(invoice_id)
    except ValueError:
        fail(f"{invoice_id!r} is not an invoice id (a UUID)", code=2)

    async def work() -> Any:
        cc = queries.connect()
        try:
            return await cc.invoice(wanted)
        finally:
            await cc.close()

    found = run(work)
    if found is None:
        fail(f"no invoice {invoice_id}")
    if json:
        print_json(found)
        return
    table = Table(
        title=f"Invoice {found.invoice_id} for {found.account_id}, cycle {found.cycle_start} - {found.cycle_end}, "
        f"issued {found.issued_on}, due {found.due_on}"
    )
    for column in ("kind", "description", "quantity", "unit price", "amount"):
        table.add_column(column, justify="right" if column in ("quantity", "unit price", "amount") else "left")
    for line in found.lines:
        table.add_row(
            line.kind,
            line.description,
            str(line.quantity),
            "" if line.unit_price is None else str(line.unit_price),
            str(line.amount),
        )
    table.add_section()
    table.add_row("total", "", "", "", f"{found.total} USD")
    console.print(table)


@app.command()
def invoices(
    account_id: Annotated[str, typer.Option("--account", help="Whose invoices.")],
    limit: Annotated[int, typer.Option(help="How many, newest first.", min=1)] = 12,
    json: Json = False,
) -> None:
    """An account's invoices, newest first."""
    from services.cycle_close import queries

    async def work() -> tuple[bool, list[Any]]:
        cc = queries.connect()
        try:
            return await cc.account_known(account_id), await cc.invoices(account_id, limit)
        finally:
            await cc.close()

    known, found = run(work)
    if not known:
        fail(f"cycle close does not know account {account_id!r}")
    if json:
        print_json(found)
        return
    _invoice_table(f"Invoices of {account_id}", found)


def main() -> None:
    """The console script: a service that cannot be reached is a one-line error (exit 1), not a traceback."""
    import sqlalchemy.exc
    from aiokafka.errors import KafkaError

    try:
        app(prog_name="billing")  # also when run as python -m billing_cli (the old forms hand over so)
    except (sqlalchemy.exc.DBAPIError, KafkaError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        console.print(f"[bold red]error:[/] {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        raise SystemExit(1) from None
