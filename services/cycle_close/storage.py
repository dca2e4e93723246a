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

metadata = sa.MetaData()

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
    sa.Column("invoice_id", sa.Uuid, nullable=True),
    sa.Index("cycle_closes_by_trigger", "trigger_id"),
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


class CloseStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def open_account(self, account_id: str, billing_day: int, first: Cycle) -> None:
        await self.session.execute(
            sa.text("insert into billing_accounts values (:a, :d, :s, :e) on conflict do nothing"),
            {"a": account_id, "d": billing_day, "s": first.start, "e": first.end},
        )

    async def account_exists(self, account_id: str) -> bool:
        found = await self.session.scalar(
            sa.text("select true from billing_accounts where account_id = :a"), {"a": account_id}
        )
        return bool(found)

    async def accounts_due(self, as_of: date, account_ids: list[str] | None) -> list[BillingAccount]:
        """Accounts with a cycle ending on or before ``as_of`` not yet asked to close, locked."""
        query = "select account_id, billing_day, next_close_start, next_close_end from billing_accounts where next_close_end <= :d"
        params: dict[str, Any] = {"d": as_of}
        if account_ids is not None:
            query += " and account_id = any(:ids)"
            params["ids"] = account_ids
        rows = await self.session.execute(sa.text(query + " order by account_id for update"), params)
        return [BillingAccount(r[0], r[1], Cycle(r[2], r[3])) for r in rows]

    async def request_closes(self, rows: list[tuple[str, Cycle]], trigger_id: uuid.UUID) -> set[tuple[str, date]]:
        """Record close requests; return the (account, cycle start) pairs that were new."""
        if not rows:
            return set()
        result = await self.session.execute(
            sa.text(
                "insert into cycle_closes (account_id, cycle_start, cycle_end, trigger_id) "
                "select a, s, e, cast(:t as uuid) from unnest(cast(:a as text[]), cast(:s as date[]), cast(:e as date[])) "
                "as r(a, s, e) on conflict do nothing returning account_id, cycle_start"
            ),
            {
                "a": [a for a, _ in rows],
                "s": [c.start for _, c in rows],
                "e": [c.end for _, c in rows],
                "t": trigger_id,
            },
        )
        return {(r[0], r[1]) for r in result}

    async def advance_accounts(self, rows: list[tuple[str, Cycle]]) -> None:
        if not rows:
            return
        await self.session.execute(
            sa.text(
                "update billing_accounts b set next_close_start = r.s, next_close_end = r.e "
                "from unnest(cast(:a as text[]), cast(:s as date[]), cast(:e as date[])) as r(a, s, e) "
                "where b.account_id = r.a"
            ),
            {"a": [a for a, _ in rows], "s": [c.start for _, c in rows], "e": [c.end for _, c in rows]},
        )

    async def store_report(self, account_id: str, cycle_start: date, column: str, report: bytes) -> Any:
        """Keep a seal's report; return the close row (locked) with both reports, or None if unknown."""
        assert column in ("license_report", "usage_report")
        return (
            await self.session.execute(
                sa.text(
                    f"update cycle_closes c set {column} = coalesce(c.{column}, :r) from billing_accounts b "
                    "where c.account_id = :a and c.cycle_start = :s and b.account_id = c.account_id "
                    "returning c.cycle_start, c.cycle_end, c.license_report, c.usage_report, c.invoice_id, b.billing_day"
                ),
                {"a": account_id, "s": cycle_start, "r": report},
            )
        ).first()

    async def take_device_orders(self, account_id: str, cycle: Cycle) -> list[DeviceOrder]:
        rows = await self.session.execute(
            sa.text(
                "update device_orders set invoice_cycle_start = :s where account_id = :a "
                "and invoice_cycle_start is null and ordered_on < :e "
                "returning order_id, sku, description, quantity, unit_price, ordered_on"
            ),
            {"a": account_id, "s": cycle.start, "e": cycle.end},
        )
        return sorted((DeviceOrder(*r) for r in rows), key=lambda o: (o.ordered_on, o.order_id))

    async def record_device_order(self, account_id: str, order: DeviceOrder) -> bool:
        result: Any = await self.session.execute(
            sa.text(
                "insert into device_orders (account_id, order_id, sku, description, quantity, unit_price, ordered_on) "
                "values (:a, :o, :k, :d, :q, :p, :on) on conflict do nothing"
            ),
            {
                "a": account_id,
                "o": order.order_id,
                "k": order.sku,
                "d": order.description,
                "q": order.quantity,
                "p": order.unit_price,
                "on": order.ordered_on,
            },
        )
        return bool(result.rowcount)

    async def save_invoice(self, account_id: str, invoice: m.InvoiceIssued) -> bool:
        inserted = (
            await self.session.execute(
                sa.text(
                    "insert into invoices values (:i, :a, :s, :e, :iss, :due, :t) on conflict do nothing returning 1"
                ),
                {
                    "i": invoice.invoice_id,
                    "a": account_id,
                    "s": invoice.cycle_start,
                    "e": invoice.cycle_end,
                    "iss": invoice.issued_on,
                    "due": invoice.due_on,
                    "t": invoice.total,
                },
            )
        ).first()
        if inserted is None:
            return False
        if invoice.lines:
            await self.session.execute(
                sa.insert(invoice_lines),
                [
                    {
                        "invoice_id": invoice.invoice_id,
                        "line_no": n,
                        "kind": line.kind,
                        "product": line.product,
                        "description": line.description,
                        "quantity": line.quantity,
                        "unit_price": line.unit_price,
                        "amount": line.amount,
                        "period_start": line.period_start,
                        "period_end": line.period_end,
                        "late": line.late,
                    }
                    for n, line in enumerate(invoice.lines, start=1)
                ],
            )
        await self.session.execute(
            sa.text("update cycle_closes set invoice_id = :i where account_id = :a and cycle_start = :s"),
            {"i": invoice.invoice_id, "a": account_id, "s": invoice.cycle_start},
        )
        return True
