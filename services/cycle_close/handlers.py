"""Cycle close's handlers: the trigger asks for seals; when both seals are in, one invoice is issued."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, time
from decimal import Decimal

from prometheus_client import Counter

from contracts import messages as m
from contracts.topics import BILLING_CHARGES, BILLING_COMMANDS, BILLING_CYCLES, BILLING_INVOICES
from services.cycle_close import domain
from services.cycle_close.settings import Settings
from services.cycle_close.storage import CloseStore
from shared.cycles import Cycle, cycle_containing, cycles_ending_by, next_cycle
from shared.runtime import metrics
from shared.runtime.registry import HandlerRegistry
from shared.runtime.unit_of_work import UnitOfWork

INVOICES_ISSUED = Counter("billing_invoices_issued", "Invoices issued (committed to be published).")
INVOICED_USD = metrics.DecimalCounter("billing_invoiced_usd", "Sum of the totals of the invoices issued, USD.")

registry = HandlerRegistry()
INVOICE_NAMESPACE = uuid.UUID("3b0e1c52-6a43-4c1e-9a57-1f1a8d0c5e11")
Work = UnitOfWork[CloseStore, Settings]


def invoice_id_for(account_id: str, cycle: Cycle) -> uuid.UUID:
    """The same account and cycle always give the same invoice id."""
    return uuid.uuid5(INVOICE_NAMESPACE, f"{account_id}:{cycle.start.isoformat()}")


@registry.on(m.AccountOpened)
async def account_opened(unit: Work, event: m.AccountOpened) -> None:
    await unit.lock_account(event.account_id)
    first = cycle_containing(event.billing_day, event.business_date)
    await unit.store.open_account(event.account_id, event.billing_day, first)
    for parked in await unit.release_parked(event.account_id):
        if isinstance(parked, m.DevicePurchased):
            await device_purchased(unit, parked)


@registry.on(m.DevicePurchased)
async def device_purchased(unit: Work, event: m.DevicePurchased) -> None:
    store = unit.store
    if not await store.account_exists(event.account_id):
        await unit.lock_account(event.account_id)  # it may be opening right now: wait, then look again
        if not await store.account_exists(event.account_id):
            await unit.park(BILLING_CHARGES.name, event)
            return
    order = domain.DeviceOrder(
        event.order_id, event.sku, event.description, event.quantity, event.unit_price, event.business_date
    )
    await store.record_device_order(event.account_id, order)  # once per order id, however often reported


@registry.on(m.CloseBillingCycles)
async def close_cycles(unit: Work, command: m.CloseBillingCycles) -> None:
    """Ask every account with a cycle ending by ``as_of`` to seal it, oldest cycle first.

    A chunk of accounts per transaction: when the chunk is full, the same command goes back to
    ``billing.commands`` as a continuation (its id derived from this one, so a redelivery sends
    the same continuation) and picks up the accounts still due. Every chunk's close requests
    carry the id of the trigger that started the chain."""
    domain.authorize_close(command.actor.role)
    store = unit.store
    trigger_id = await store.trigger_of(command.message_id)
    chunk = unit.settings.close_chunk_accounts
    due = await store.accounts_due(command.as_of, command.account_ids, limit=chunk)
    requests: list[tuple[str, Cycle]] = []
    advanced: list[tuple[str, Cycle]] = []
    for account in due:
        cycles = cycles_ending_by(account.billing_day, account.next_close, command.as_of)
        requests += [(account.account_id, cycle) for cycle in cycles]
        advanced.append((account.account_id, next_cycle(account.billing_day, cycles[-1])))
    new = await store.request_closes(requests, trigger_id)
    await store.advance_accounts(advanced)
    more = len(due) == chunk
    if more:
        continuation = command.model_copy(update={"message_id": uuid.uuid5(command.message_id, "continued")})
        await store.record_chunk(continuation.message_id, trigger_id, finished=False)
        unit.emit(BILLING_COMMANDS.name, continuation)
    await store.record_chunk(command.message_id, trigger_id, finished=not more)
    for account_id, cycle in requests:
        if (account_id, cycle.start) not in new:
            continue
        unit.emit(
            BILLING_CYCLES.name,
            m.BillingCycleClosing(
                message_id=uuid.uuid5(trigger_id, f"{account_id}:{cycle.start}"),
                account_id=account_id,
                occurred_at=datetime.combine(cycle.end, time(0), UTC),
                causation_id=trigger_id,
                cycle_start=cycle.start,
                cycle_end=cycle.end,
            ),
        )


@registry.on_batch(m.LicenseCycleSealed)
async def licenses_sealed(unit: Work, reports: list[m.LicenseCycleSealed]) -> None:
    await _reports_in(unit, reports, "license_report")


@registry.on_batch(m.UsageCycleSealed)
async def usage_sealed(unit: Work, reports: list[m.UsageCycleSealed]) -> None:
    await _reports_in(unit, reports, "usage_report")


async def _reports_in(unit: Work, reports: Sequence[m.LicenseCycleSealed | m.UsageCycleSealed], column: str) -> None:
    """Keep the seals' reports; every close that now has both gets its invoice (set-based)."""
    store = unit.store
    rows = await store.store_reports(column, [(r.account_id, r.cycle_start, unit.payload_of(r)) for r in reports])
    found = {(row.account_id, row.cycle_start) for row in rows}
    for report in reports:
        if (report.account_id, report.cycle_start) not in found:
            raise ValueError(f"a seal for a cycle nobody asked to close: {report.account_id} {report.cycle_start}")
    ready = [r for r in rows if r.invoice_id is None and r.license_report is not None and r.usage_report is not None]
    if not ready:
        return  # already invoiced, or still waiting for the other seal
    cause = {(r.account_id, r.cycle_start): r for r in reports}
    devices = await store.take_device_orders_many([(r.account_id, Cycle(r.cycle_start, r.cycle_end)) for r in ready])
    invoices: list[tuple[m.InvoiceIssued, m.BillingCycleClosed]] = []
    for row in ready:
        cycle = Cycle(row.cycle_start, row.cycle_end)
        this = cause[(row.account_id, row.cycle_start)]  # the report in hand: no need to parse it again
        licenses = (
            this
            if isinstance(this, m.LicenseCycleSealed)
            else m.LicenseCycleSealed.model_validate_json(row.license_report)
        )
        usage = (
            this if isinstance(this, m.UsageCycleSealed) else m.UsageCycleSealed.model_validate_json(row.usage_report)
        )
        lines = domain.invoice_lines(cycle, licenses, usage, devices.get((row.account_id, cycle.start), []))
        invoice_id = invoice_id_for(row.account_id, cycle)
        closed_at = datetime.combine(cycle.end, time(0), UTC)
        causation = cause[(row.account_id, row.cycle_start)].message_id
        following = next_cycle(row.billing_day, cycle)
        invoices.append(
            (
                m.InvoiceIssued(
                    message_id=uuid.uuid5(invoice_id, "InvoiceIssued"),
                    account_id=row.account_id,
                    occurred_at=closed_at,
                    causation_id=causation,
                    invoice_id=invoice_id,
                    cycle_start=cycle.start,
                    cycle_end=cycle.end,
                    issued_on=cycle.end,
                    due_on=cycle.end,
                    lines=lines,
                    total=domain.total(lines),
                ),
                m.BillingCycleClosed(
                    message_id=uuid.uuid5(invoice_id, "BillingCycleClosed"),
                    account_id=row.account_id,
                    occurred_at=closed_at,
                    causation_id=causation,
                    cycle_start=cycle.start,
                    cycle_end=cycle.end,
                    next_cycle_start=following.start,
                    next_cycle_end=following.end,
                ),
            )
        )
    new = await store.save_invoices([invoice for invoice, _ in invoices])
    issued = [(invoice, closed) for invoice, closed in invoices if invoice.invoice_id in new]
    for invoice, closed in issued:
        unit.emit(BILLING_INVOICES.name, invoice)
        unit.emit(BILLING_CYCLES.name, closed)
    if metrics.enabled and issued:
        unit.count(INVOICES_ISSUED, len(issued))
        unit.count(INVOICED_USD, sum((invoice.total for invoice, _ in issued), Decimal(0)))
