"""What cycle close tells operators about its own data: invoices as issued, and how far a
close trigger has got (``billing invoice``, ``billing account``, ``billing close-cycles``).
Read from this service's database only."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.cycle_close.settings import Settings
from shared.db import make_engine
from shared.runtime.dead_letters import DeadLetters


@dataclass(frozen=True)
class InvoiceLine:
    kind: str
    product: str | None
    description: str
    quantity: int
    unit_price: Decimal | None
    amount: Decimal
    period_start: date
    period_end: date
    late: bool


@dataclass(frozen=True)
class Invoice:
    invoice_id: uuid.UUID
    account_id: str
    cycle_start: date
    cycle_end: date
    issued_on: date
    due_on: date
    total: Decimal
    lines: list[InvoiceLine]


@dataclass(frozen=True)
class CloseProgress:
    """A trigger's progress: ``requested`` closes so far, ``invoiced`` of them; ``settled`` once
    its chain of chunks found no account left due (then ``requested`` is final)."""

    settled: bool
    requested: int
    invoiced: int
    accounts: int
    billed: Decimal

    @property
    def done(self) -> bool:
        return self.settled and self.invoiced == self.requested


def _invoice(head: Any, lines: list[InvoiceLine]) -> Invoice:
    return Invoice(head[0], head[1], head[2], head[3], head[4], head[5], head[6], lines)


class CloseQueries:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dead_letters = DeadLetters("cycle_close", engine)

    async def account_known(self, account_id: str) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.scalar(
                sa.text("select true from billing_accounts where account_id = :a"), {"a": account_id}
            )
        return bool(found)

    async def invoices(self, account_id: str, limit: int = 12) -> list[Invoice]:
        """The account's last ``limit`` invoices, newest first, with their lines."""
        async with self.engine.connect() as conn:
            heads = (
                await conn.execute(
                    sa.text(
                        "select invoice_id, account_id, cycle_start, cycle_end, issued_on, due_on, total "
                        "from invoices where account_id = :a order by cycle_start desc limit :n"
                    ),
                    {"a": account_id, "n": limit},
                )
            ).all()
            lines = await self._lines(conn, [h[0] for h in heads])
        return [_invoice(h, lines.get(h[0], [])) for h in heads]

    async def invoice(self, invoice_id: uuid.UUID) -> Invoice | None:
        async with self.engine.connect() as conn:
            head = (
                await conn.execute(
                    sa.text(
                        "select invoice_id, account_id, cycle_start, cycle_end, issued_on, due_on, total "
                        "from invoices where invoice_id = :i"
                    ),
                    {"i": invoice_id},
                )
            ).first()
            if head is None:
                return None
            lines = await self._lines(conn, [invoice_id])
        return _invoice(head, lines.get(invoice_id, []))

    @staticmethod
    async def _lines(conn: AsyncConnection, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[InvoiceLine]]:
        found: dict[uuid.UUID, list[InvoiceLine]] = {}
        if not ids:
            return found
        rows = await conn.execute(
            sa.text(
                "select invoice_id, kind, product, description, quantity, unit_price, amount, period_start, "
                "period_end, late from invoice_lines where invoice_id = any(:i) order by invoice_id, line_no"
            ),
            {"i": ids},
        )
        for r in rows:
            found.setdefault(r[0], []).append(InvoiceLine(*r[1:]))
        return found

    async def close_progress(self, trigger_id: uuid.UUID) -> CloseProgress:
        async with self.engine.connect() as conn:
            settled = await conn.scalar(
                sa.text("select count(*) > 0 from close_chunks where trigger_id = :t and finished"), {"t": trigger_id}
            )
            row = (
                await conn.execute(
                    sa.text(
                        "select count(*), count(i.invoice_id), count(distinct c.account_id), "
                        "coalesce(sum(i.total), 0) from cycle_closes c left join invoices i "
                        "on i.account_id = c.account_id and i.cycle_start = c.cycle_start where c.trigger_id = :t"
                    ),
                    {"t": trigger_id},
                )
            ).one()
        return CloseProgress(bool(settled), row[0], row[1], row[2], row[3])

    async def close(self) -> None:
        await self.engine.dispose()


def connect(settings: Settings | None = None) -> CloseQueries:
    return CloseQueries(make_engine((settings or Settings()).database_url, pool_size=2))
