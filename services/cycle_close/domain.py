"""Invoice assembly as pure functions (no I/O): lines from the seals' reports, devices, and the total.

Rules: ``shared/spec/domain.md`` (Cycle close, Other one-off charges).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from contracts import messages as m
from shared.cycles import Cycle
from shared.money import to_cents
from shared.rejections import Rejected

TRIGGER_ROLES = frozenset({"service", "operator"})


def authorize_close(role: str) -> None:
    if role not in TRIGGER_ROLES:
        raise Rejected("not_authorized", f"only the scheduler (service) or an operator may close cycles, not {role}")


@dataclass(frozen=True)
class DeviceOrder:
    order_id: str
    sku: str
    description: str
    quantity: int
    unit_price: Decimal
    ordered_on: date

    @property
    def amount(self) -> Decimal:
        return to_cents(self.unit_price * self.quantity)


@functools.lru_cache(maxsize=4096)
def _period(start: date, end: date) -> str:
    """The period as invoices print it, e.g. Dec 1 - Dec 31, 2026. Cached: strftime's %b was 4 % of
    the worker's time in a big close, which has only a few distinct periods."""
    return f"{start:%b} {start.day} - {end:%b} {end.day}, {end.year}"


def invoice_lines(
    cycle: Cycle, licenses: m.LicenseCycleSealed, usage: m.UsageCycleSealed, devices: list[DeviceOrder]
) -> list[m.InvoiceLine]:
    lines: list[m.InvoiceLine] = []
    for charge in licenses.recurring:
        lines.append(
            m.InvoiceLine(
                kind="recurring",
                product=charge.product,
                description=f"{charge.quantity} x {charge.product} license, {_period(charge.period_start, charge.period_end)} (in advance)",
                quantity=charge.quantity,
                unit_price=charge.unit_price,
                amount=to_cents(charge.amount),
                period_start=charge.period_start,
                period_end=charge.period_end,
            )
        )
    for proration in licenses.prorations:
        late = " (late)" if proration.late else ""
        lines.append(
            m.InvoiceLine(
                kind="proration",
                product=proration.product,
                description=f"{proration.quantity} x {proration.product} license, prorated "
                f"{_period(proration.period_start, proration.period_end)}{late}",
                quantity=proration.quantity,
                unit_price=proration.unit_price,
                amount=to_cents(proration.amount),
                period_start=proration.period_start,
                period_end=proration.period_end,
                late=proration.late,
            )
        )
    accrued = to_cents(usage.accrued)
    if accrued > 0:
        lines.append(
            m.InvoiceLine(
                kind="calling_credits",
                description=f"Calling credits, {_period(cycle.start, cycle.end)} (cap {usage.cap})",
                quantity=1,
                amount=accrued,
                period_start=cycle.start,
                period_end=cycle.end,
            )
        )
    for late_usage in usage.late:
        if to_cents(late_usage.amount) == 0:
            continue  # under half a cent: nothing to bill, like a zero accrual
        lines.append(
            m.InvoiceLine(
                kind="calling_credits",
                description=f"Calling credits, {_period(late_usage.cycle_start, late_usage.cycle_end)} (late usage)",
                quantity=1,
                amount=to_cents(late_usage.amount),
                period_start=late_usage.cycle_start,
                period_end=late_usage.cycle_end,
                late=True,
            )
        )
    for order in devices:
        lines.append(
            m.InvoiceLine(
                kind="device",
                description=f"{order.description or order.sku} (order {order.order_id})",
                quantity=order.quantity,
                unit_price=order.unit_price,
                amount=order.amount,
                period_start=order.ordered_on,
                period_end=order.ordered_on,
                late=order.ordered_on < cycle.start,
            )
        )
    return lines


def total(lines: list[m.InvoiceLine]) -> Decimal:
    return sum((line.amount for line in lines), Decimal("0.00"))
