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

    async def trigger_of(self, message_id: uuid.UUID) -> uuid.UUID:
        """The trigger a continuation belongs to; a trigger belongs to itself."""
        found = await self.session.scalar(
            sa.text("select trigger_id from close_chunks where message_id = :m"), {"m": message_id}
        )
        return found if found is not None else message_id

    async def record_chunk(self, message_id: uuid.UUID, trigger_id: uuid.UUID, finished: bool) -> None:
        await self.session.execute(
            sa.text(
                "insert into close_chunks values (:m, :t, :f) on conflict (message_id) do update set finished = :f"
            ),
            {"m": message_id, "t": trigger_id, "f": finished},
        )

    async def accounts_due(self, as_of: date, account_ids: list[str] | None, limit: int) -> list[BillingAccount]:
        """Up to ``limit`` accounts with a cycle ending on or before ``as_of`` not yet asked to
        close, locked (a concurrent trigger waits, then sees them advanced and skips them)."""
        query = "select account_id, billing_day, next_close_start, next_close_end from billing_accounts where next_close_end <= :d"
        params: dict[str, Any] = {"d": as_of}
        if account_ids is not None:
            query += " and account_id = any(:ids)"
            params["ids"] = account_ids
        params["n"] = limit
        rows = await self.session.execute(sa.text(query + " order by account_id limit :n for update"), params)
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

    async def store_reports(self, column: str, reports: list[tuple[str, date, bytes]]) -> list[Any]:
        """Keep seals' reports (set-based); return the close rows they touched, with both reports,
        the invoice id if already invoiced, and the account's billing day."""
        assert column in ("license_report", "usage_report")
        if not reports:
            return []
        accounts, starts, payloads = (list(c) for c in zip(*reports, strict=True))
        result = await self.session.execute(
            sa.text(
                f"update cycle_closes c set {column} = coalesce(c.{column}, r.report) "
                "from unnest(cast(:a as text[]), cast(:s as date[]), cast(:r as bytea[])) as r(account_id, start, report) "
                "join billing_accounts b on b.account_id = r.account_id "
                "left join invoices i on i.account_id = r.account_id and i.cycle_start = r.start "
                "where c.account_id = r.account_id and c.cycle_start = r.start "
                "returning c.account_id, c.cycle_start, c.cycle_end, "
                "c.license_report, c.usage_report, i.invoice_id, b.billing_day"
            ),
            {"a": accounts, "s": starts, "r": payloads},
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
            sa.text(
                "update device_orders d set invoice_cycle_start = r.start "
                "from unnest(cast(:a as text[]), cast(:s as date[]), cast(:e as date[])) as r(account_id, start, stop) "
                "where d.account_id = r.account_id and d.invoice_cycle_start is null and d.ordered_on < r.stop "
                "returning d.account_id, r.start, d.order_id, d.sku, d.description, d.quantity, d.unit_price, d.ordered_on"
            ),
            {"a": [a for a, _ in closes], "s": [c.start for _, c in closes], "e": [c.end for _, c in closes]},
        )
        for row in rows:
            taken.setdefault((row[0], row[1]), []).append(DeviceOrder(*row[2:]))
        for orders in taken.values():
            orders.sort(key=lambda o: (o.ordered_on, o.order_id))
        return taken

    async def save_invoices(self, invoices: list[m.InvoiceIssued]) -> set[uuid.UUID]:
        """Store invoices and their lines (one per account and cycle); return the ids that were new.
        The invoices table is what marks a close as invoiced (unique per account and cycle)."""
        if not invoices:
            return set()
        inserted = await self.session.execute(
            sa.text(
                "insert into invoices select * from unnest(cast(:i as uuid[]), cast(:a as text[]), "
                "cast(:s as date[]), cast(:e as date[]), cast(:iss as date[]), cast(:due as date[]), "
                "cast(cast(:t as text[]) as numeric[])) on conflict do nothing returning invoice_id"
            ),
            {
                "i": [v.invoice_id for v in invoices],
                "a": [v.account_id for v in invoices],
                "s": [v.cycle_start for v in invoices],
                "e": [v.cycle_end for v in invoices],
                "iss": [v.issued_on for v in invoices],
                "due": [v.due_on for v in invoices],
                "t": [str(v.total) for v in invoices],  # text: asyncpg encodes Decimal slowly
            },
        )
        new = {row[0] for row in inserted}
        lines = [(v, n, line) for v in invoices if v.invoice_id in new for n, line in enumerate(v.lines, start=1)]
        if lines:
            await self.session.execute(
                sa.text(
                    "insert into invoice_lines select * from unnest(cast(:i as uuid[]), cast(:n as int[]), "
                    "cast(:k as text[]), cast(:p as text[]), cast(:d as text[]), cast(:q as int[]), "
                    "cast(cast(:u as text[]) as numeric[]), cast(cast(:amt as text[]) as numeric[]), cast(:ps as date[]), cast(:pe as date[]), "
                    "cast(:late as boolean[]))"
                ),
                {
                    "i": [v.invoice_id for v, _, _ in lines],
                    "n": [n for _, n, _ in lines],
                    "k": [line.kind for _, _, line in lines],
                    "p": [line.product for _, _, line in lines],
                    "d": [line.description for _, _, line in lines],
                    "q": [line.quantity for _, _, line in lines],
                    "u": [None if line.unit_price is None else str(line.unit_price) for _, _, line in lines],
                    "amt": [str(line.amount) for _, _, line in lines],
                    "ps": [line.period_start for _, _, line in lines],
                    "pe": [line.period_end for _, _, line in lines],
                    "late": [line.late for _, _, line in lines],
                },
            )
        return new

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
