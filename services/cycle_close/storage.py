"""Cycle close's own tables: billing accounts, close requests, device orders, invoices and lines."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import messages as m
from services.cycle_close.domain import DeviceOrder
from shared.cycles import Cycle
from shared.runtime.tables import declare_runtime_tables

metadata = sa.MetaData()
declare_runtime_tables(metadata)

accounts = sa.Table(
    "billing_accounts",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("billing_day", sa.SmallInteger, nullable=False),
    sa.Column("next_close_start", sa.Date, nullable=False, comment="start of the oldest cycle not yet asked to close"),
    sa.Column("next_close_end", sa.Date, nullable=False),
)
closes = sa.Table(
    "cycle_closes",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("cycle_start", sa.Date, primary_key=True),
    sa.Column("cycle_end", sa.Date, nullable=False),
    sa.Column("trigger_id", sa.Uuid, nullable=False),
    sa.Column("license_report", sa.LargeBinary, nullable=True),
    sa.Column("usage_report", sa.LargeBinary, nullable=True),
    sa.Index("cycle_closes_by_trigger", "trigger_id"),
)
close_chunks = sa.Table(
    "close_chunks",
    metadata,
    sa.Column("message_id", sa.Uuid, primary_key=True, comment="a trigger or one of its continuations"),
    sa.Column("trigger_id", sa.Uuid, nullable=False, comment="the trigger that started the chain"),
    sa.Column("finished", sa.Boolean, nullable=False, comment="processed, and no account was left due"),
    sa.Index("close_chunks_by_trigger", "trigger_id"),
)
device_orders = sa.Table(
    "device_orders",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.Numeric(14, 2), nullable=False),
    sa.Column("ordered_on", sa.Date, nullable=False),
    sa.Column("invoice_cycle_start", sa.Date, nullable=True),
)
invoices = sa.Table(
    "invoices",
    metadata,
    sa.Column("invoice_id", sa.Uuid, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("cycle_start", sa.Date, nullable=False),
    sa.Column("cycle_end", sa.Date, nullable=False),
    sa.Column("issued_on", sa.Date, nullable=False),
    sa.Column("due_on", sa.Date, nullable=False),
    sa.Column("total", sa.Numeric(16, 2), nullable=False),
    sa.UniqueConstraint("account_id", "cycle_start", name="one_invoice_per_account_and_cycle"),
)
invoice_lines = sa.Table(
    "invoice_lines",
    metadata,
    sa.Column("invoice_id", sa.Uuid, primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("product", sa.Text, nullable=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.Numeric(14, 2), nullable=True),
    sa.Column("amount", sa.Numeric(16, 2), nullable=False),
    sa.Column("period_start", sa.Date, nullable=False),
    sa.Column("period_end", sa.Date, nullable=False),
    sa.Column("late", sa.Boolean, nullable=False),
)


@dataclass(frozen=True)
class BillingAccount:
    account_id: str
    billing_day: int
    next_close: Cycle


# Every statement of the store, with named parameters, run through the session.
OPEN_ACCOUNT = (
    "insert into billing_accounts (account_id, billing_day, next_close_start, next_close_end) "
    "values (:account_id, :billing_day, :next_close_start, :next_close_end) on conflict do nothing"
)
ACCOUNT_EXISTS = "select true from billing_accounts where account_id = :account_id"
TRIGGER_OF = "select trigger_id from close_chunks where message_id = :message_id"
RECORD_CHUNK = (
    "insert into close_chunks (message_id, trigger_id, finished) values (:message_id, :trigger_id, :finished) "
    "on conflict (message_id) do update set finished = :finished"
)
ACCOUNTS_DUE = (
    "select account_id, billing_day, next_close_start, next_close_end from billing_accounts "
    "where next_close_end <= :as_of order by account_id limit :limit for update"
)
ACCOUNTS_DUE_AMONG = (
    "select account_id, billing_day, next_close_start, next_close_end from billing_accounts "
    "where next_close_end <= :as_of and account_id = any(:account_ids) order by account_id limit :limit for update"
)
REQUEST_CLOSES = (
    "insert into cycle_closes (account_id, cycle_start, cycle_end, trigger_id) "
    "select asked.account_id, asked.cycle_start, asked.cycle_end, cast(:trigger_id as uuid) "
    "from unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[]), cast(:cycle_ends as date[])) "
    "as asked(account_id, cycle_start, cycle_end) on conflict do nothing returning account_id, cycle_start"
)
ADVANCE_ACCOUNTS = (
    "update billing_accounts b set next_close_start = advanced.next_close_start, "
    "next_close_end = advanced.next_close_end "
    "from unnest(cast(:account_ids as text[]), cast(:next_close_starts as date[]), cast(:next_close_ends as date[])) "
    "as advanced(account_id, next_close_start, next_close_end) where b.account_id = advanced.account_id"
)
# {column}: license_report or usage_report.
STORE_REPORTS = (
    "update cycle_closes c set {column} = coalesce(c.{column}, reported.report) "
    "from unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[]), cast(:reports as bytea[])) "
    "as reported(account_id, cycle_start, report) "
    "join billing_accounts b on b.account_id = reported.account_id "
    "left join invoices i on i.account_id = reported.account_id and i.cycle_start = reported.cycle_start "
    "where c.account_id = reported.account_id and c.cycle_start = reported.cycle_start "
    "returning c.account_id, c.cycle_start, c.cycle_end, c.license_report, c.usage_report, i.invoice_id, "
    "b.billing_day"
)
TAKE_DEVICE_ORDERS = (
    "update device_orders d set invoice_cycle_start = closing.cycle_start "
    "from unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[]), cast(:cycle_ends as date[])) "
    "as closing(account_id, cycle_start, cycle_end) "
    "where d.account_id = closing.account_id and d.invoice_cycle_start is null and d.ordered_on < closing.cycle_end "
    "returning d.account_id, closing.cycle_start, d.order_id, d.sku, d.description, d.quantity, d.unit_price, "
    "d.ordered_on"
)
# Money as text: asyncpg encodes Decimal slowly.
SAVE_INVOICES = (
    "insert into invoices (invoice_id, account_id, cycle_start, cycle_end, issued_on, due_on, total) "
    "select * from unnest(cast(:invoice_ids as uuid[]), cast(:account_ids as text[]), cast(:cycle_starts as date[]), "
    "cast(:cycle_ends as date[]), cast(:issued_on as date[]), cast(:due_on as date[]), "
    "cast(cast(:totals as text[]) as numeric[])) on conflict do nothing returning invoice_id"
)
SAVE_INVOICE_LINES = (
    "insert into invoice_lines (invoice_id, line_no, kind, product, description, quantity, unit_price, amount, "
    "period_start, period_end, late) "
    "select * from unnest(cast(:invoice_ids as uuid[]), cast(:line_numbers as int[]), cast(:kinds as text[]), "
    "cast(:products as text[]), cast(:descriptions as text[]), cast(:quantities as int[]), "
    "cast(cast(:unit_prices as text[]) as numeric[]), cast(cast(:amounts as text[]) as numeric[]), "
    "cast(:period_starts as date[]), cast(:period_ends as date[]), cast(:lates as boolean[]))"
)
RECORD_DEVICE_ORDER = (
    "insert into device_orders (account_id, order_id, sku, description, quantity, unit_price, ordered_on) "
    "values (:account_id, :order_id, :sku, :description, :quantity, :unit_price, :ordered_on) on conflict do nothing"
)


class CloseStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def open_account(self, account_id: str, billing_day: int, first: Cycle) -> None:
        await self.session.execute(
            sa.text(OPEN_ACCOUNT),
            {
                "account_id": account_id,
                "billing_day": billing_day,
                "next_close_start": first.start,
                "next_close_end": first.end,
            },
        )

    async def account_exists(self, account_id: str) -> bool:
        return bool(await self.session.scalar(sa.text(ACCOUNT_EXISTS), {"account_id": account_id}))

    async def trigger_of(self, message_id: uuid.UUID) -> uuid.UUID:
        """The trigger a continuation belongs to; a trigger belongs to itself."""
        found = await self.session.scalar(sa.text(TRIGGER_OF), {"message_id": message_id})
        return found if found is not None else message_id

    async def record_chunk(self, message_id: uuid.UUID, trigger_id: uuid.UUID, finished: bool) -> None:
        await self.session.execute(
            sa.text(RECORD_CHUNK), {"message_id": message_id, "trigger_id": trigger_id, "finished": finished}
        )

    async def accounts_due(self, as_of: date, account_ids: list[str] | None, limit: int) -> list[BillingAccount]:
        """Up to ``limit`` accounts with a cycle ending on or before ``as_of`` not yet asked to
        close, locked (a concurrent trigger waits, then sees them advanced and skips them)."""
        statement = ACCOUNTS_DUE if account_ids is None else ACCOUNTS_DUE_AMONG
        rows = await self.session.execute(
            sa.text(statement), {"as_of": as_of, "account_ids": account_ids, "limit": limit}
        )
        return [
            BillingAccount(row.account_id, row.billing_day, Cycle(row.next_close_start, row.next_close_end))
            for row in rows
        ]

    async def request_closes(self, rows: list[tuple[str, Cycle]], trigger_id: uuid.UUID) -> set[tuple[str, date]]:
        """Record close requests; return the (account, cycle start) pairs that were new."""
        if not rows:
            return set()
        result = await self.session.execute(
            sa.text(REQUEST_CLOSES),
            {
                "account_ids": [account for account, _ in rows],
                "cycle_starts": [cycle.start for _, cycle in rows],
                "cycle_ends": [cycle.end for _, cycle in rows],
                "trigger_id": trigger_id,
            },
        )
        return {(row.account_id, row.cycle_start) for row in result}

    async def advance_accounts(self, rows: list[tuple[str, Cycle]]) -> None:
        if not rows:
            return
        await self.session.execute(
            sa.text(ADVANCE_ACCOUNTS),
            {
                "account_ids": [account for account, _ in rows],
                "next_close_starts": [cycle.start for _, cycle in rows],
                "next_close_ends": [cycle.end for _, cycle in rows],
            },
        )

    async def store_reports(self, column: str, reports: list[tuple[str, date, bytes]]) -> list[Any]:
        """Keep seals' reports (set-based); return the close rows they touched, with both reports,
        the invoice id if already invoiced, and the account's billing day."""
        assert column in ("license_report", "usage_report")
        if not reports:
            return []
        result = await self.session.execute(
            sa.text(STORE_REPORTS.format(column=column)),
            {
                "account_ids": [account for account, _, _ in reports],
                "cycle_starts": [start for _, start, _ in reports],
                "reports": [report for _, _, report in reports],
            },
        )
        return list(result.all())

    async def take_device_orders_many(
        self, closes: list[tuple[str, Cycle]]
    ) -> dict[tuple[str, date], list[DeviceOrder]]:
        """For each (account, cycle): the device orders recorded so far, dated before the cycle end
        and on no invoice yet, now marked as billed on this cycle's invoice."""
        taken: dict[tuple[str, date], list[DeviceOrder]] = {}
        if not closes:
            return taken
        rows = await self.session.execute(
            sa.text(TAKE_DEVICE_ORDERS),
            {
                "account_ids": [account for account, _ in closes],
                "cycle_starts": [cycle.start for _, cycle in closes],
                "cycle_ends": [cycle.end for _, cycle in closes],
            },
        )
        for row in rows:
            order = DeviceOrder(row.order_id, row.sku, row.description, row.quantity, row.unit_price, row.ordered_on)
            taken.setdefault((row.account_id, row.cycle_start), []).append(order)
        for orders in taken.values():
            orders.sort(key=lambda o: (o.ordered_on, o.order_id))
        return taken

    async def save_invoices(self, invoices: list[m.InvoiceIssued]) -> set[uuid.UUID]:
        """Store invoices and their lines (one per account and cycle); return the ids that were new.
        The invoices table is what marks a close as invoiced (unique per account and cycle)."""
        if not invoices:
            return set()
        inserted = await self.session.execute(
            sa.text(SAVE_INVOICES),
            {
                "invoice_ids": [v.invoice_id for v in invoices],
                "account_ids": [v.account_id for v in invoices],
                "cycle_starts": [v.cycle_start for v in invoices],
                "cycle_ends": [v.cycle_end for v in invoices],
                "issued_on": [v.issued_on for v in invoices],
                "due_on": [v.due_on for v in invoices],
                "totals": [str(v.total) for v in invoices],
            },
        )
        new = {row.invoice_id for row in inserted}
        lines = [(v, n, line) for v in invoices if v.invoice_id in new for n, line in enumerate(v.lines, start=1)]
        if lines:
            await self.session.execute(
                sa.text(SAVE_INVOICE_LINES),
                {
                    "invoice_ids": [v.invoice_id for v, _, _ in lines],
                    "line_numbers": [n for _, n, _ in lines],
                    "kinds": [line.kind for _, _, line in lines],
                    "products": [line.product for _, _, line in lines],
                    "descriptions": [line.description for _, _, line in lines],
                    "quantities": [line.quantity for _, _, line in lines],
                    "unit_prices": [None if line.unit_price is None else str(line.unit_price) for _, _, line in lines],
                    "amounts": [str(line.amount) for _, _, line in lines],
                    "period_starts": [line.period_start for _, _, line in lines],
                    "period_ends": [line.period_end for _, _, line in lines],
                    "lates": [line.late for _, _, line in lines],
                },
            )
        return new

    async def record_device_order(self, account_id: str, order: DeviceOrder) -> bool:
        result: Any = await self.session.execute(
            sa.text(RECORD_DEVICE_ORDER),
            {
                "account_id": account_id,
                "order_id": order.order_id,
                "sku": order.sku,
                "description": order.description,
                "quantity": order.quantity,
                "unit_price": order.unit_price,
                "ordered_on": order.ordered_on,
            },
        )
        return bool(result.rowcount)
