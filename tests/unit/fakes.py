"""In-memory stand-ins for a unit of work and the three services' stores (no I/O).

Each fake store keeps its tables as Python collections and answers each method as the SQL of
the real store does; ``test_fakes_match`` keeps their methods in line with the real ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from contracts import messages as m
from contracts.envelope import Command, Envelope, Event
from contracts.topics import BY_NAME
from services.cycle_close.domain import DeviceOrder
from services.cycle_close.storage import BillingAccount
from services.license_orders import storage as license_storage
from services.license_orders.domain import Balance, PurchaseQuote
from services.usage_metering import storage as metering_storage
from services.usage_metering.domain import Meter, in_micros, in_usd
from shared.cycles import Cycle
from shared.runtime.seals import SealKey
from shared.runtime.unit_of_work import Received


@dataclass
class FakeUnit:
    """A unit of work in memory: what handlers emit, park and lock is kept in lists."""

    store: Any
    settings: Any = None
    emitted: list[tuple[str, Envelope]] = field(default_factory=list)
    parked: list[tuple[str, Envelope]] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    counted: list[tuple[Any, Any]] = field(default_factory=list)

    def count(self, counter: Any, amount: Any = 1) -> None:
        self.counted.append((counter, amount))

    def emit(self, topic: str, event: Event | Command) -> None:
        self.emitted.append((topic, event))

    def resend(self, topic: str, payload: bytes) -> None:
        self.emitted.append((topic, _parse(topic, payload)))

    def payload_of(self, message: Envelope | Received) -> bytes:
        assert isinstance(message, Envelope), "the fake unit holds contract models only"
        return message.model_dump_json().encode()

    async def lock_account(self, account_id: str) -> None:
        self.locked.append(account_id)

    async def park(self, topic: str, message: Envelope) -> None:
        self.parked.append((topic, message))

    async def release_parked(self, account_id: str) -> list[Envelope]:
        released = [message for _, message in self.parked if message.account_id == account_id]
        self.parked = [(t, message) for t, message in self.parked if message.account_id != account_id]
        return released

    def events(self, kind: type[Envelope] | None = None) -> list[Any]:
        return [event for _, event in self.emitted if kind is None or isinstance(event, kind)]


def _parse(topic: str, payload: bytes) -> Envelope:
    model = BY_NAME[topic].model_for(Envelope.model_validate_json(payload).type)
    assert model is not None
    return model.model_validate_json(payload)


class FakeSealLedger:
    def __init__(self) -> None:
        self.events: dict[SealKey, bytes] = {}

    async def sent(self, keys: Sequence[SealKey]) -> dict[SealKey, bytes]:
        return {key: self.events[key] for key in keys if key in self.events}

    async def record(self, seals: Sequence[tuple[SealKey, bytes]]) -> None:
        for key, event in seals:
            assert key not in self.events, f"a second seal of {key}"
            self.events[key] = event


# ---------------------------------------------------------------------------------------- license orders
@dataclass
class _Removal:
    id: int
    account_id: str
    product: str
    quantity: int
    effective_on: date
    applied: bool = False


@dataclass
class _Purchase:
    account_id: str
    product: str
    purchase_day: date
    quantity_added: int


@dataclass
class _Proration:
    id: int
    purchase_id: uuid.UUID
    account_id: str
    product: str
    quantity: int
    unit_price: Decimal
    amount: Decimal
    period_start: date
    period_end: date
    late: bool
    sealed_in: date | None = None


class FakeLicenseStore:
    def __init__(self, prices: dict[str, Decimal] | None = None) -> None:
        self.seals = FakeSealLedger()
        self.accounts: dict[str, license_storage.Account] = {}
        self.balances: dict[tuple[str, str], Balance] = {}
        self.assignments: set[tuple[str, str, str]] = set()
        self.purchases: list[_Purchase] = []
        self.prorations: list[_Proration] = []
        self.removals: list[_Removal] = []
        self.prices = dict(prices or {"user": Decimal("15.00"), "fax": Decimal("10.00")})
        self.account_prices: dict[tuple[str, str], Decimal] = {}

    async def open_account(self, account_id: str, billing_day: int, first_cycle: Cycle) -> bool:
        if account_id in self.accounts:
            return False
        self.accounts[account_id] = license_storage.Account(account_id, billing_day, first_cycle)
        return True

    def _pending(self, account_id: str, product: str) -> list[_Removal]:
        return [r for r in self.removals if r.account_id == account_id and r.product == product and not r.applied]

    async def command_state(
        self, account_id: str, product: str, day: date, assignee_id: str = ""
    ) -> license_storage.CommandState | None:
        account = self.accounts.get(account_id)
        if account is None:
            return None
        return license_storage.CommandState(
            account,
            self.balances.get((account_id, product), Balance(0, 0, 0)),
            self.account_prices.get((account_id, product), self.prices.get(product)),
            sum(r.quantity for r in self._pending(account_id, product) if r.effective_on > day),
            (account_id, product, assignee_id) in self.assignments,
        )

    async def held_at(self, account_id: str, product: str, end: date) -> int:
        purchased = self.balances.get((account_id, product), Balance(0, 0, 0)).purchased
        bought_later = sum(
            p.quantity_added
            for p in self.purchases
            if p.account_id == account_id and p.product == product and p.purchase_day >= end
        )
        leaving = sum(r.quantity for r in self._pending(account_id, product) if r.effective_on <= end)
        return purchased - bought_later - leaving

    def _save(self, account_id: str, product: str, balance: Balance) -> None:
        balance.check()
        self.balances[(account_id, product)] = balance

    async def add_assignment(self, account_id: str, product: str, assignee_id: str, after: Balance) -> None:
        self._save(account_id, product, after)
        self.assignments.add((account_id, product, assignee_id))

    async def remove_assignment(self, account_id: str, product: str, assignee_id: str, after: Balance) -> None:
        self._save(account_id, product, after)
        self.assignments.discard((account_id, product, assignee_id))

    async def record_purchase(
        self, account_id: str, product: str, day: date, quote: PurchaseQuote, command_id: uuid.UUID, after: Balance
    ) -> uuid.UUID:
        purchase_id = uuid.uuid5(command_id, "purchase")
        self._save(account_id, product, after)
        self.purchases.append(_Purchase(account_id, product, day, quote.quantity_added))
        for segment in quote.segments:
            self.prorations.append(
                _Proration(
                    len(self.prorations) + 1,
                    purchase_id,
                    account_id,
                    product,
                    quote.quantity_added,
                    quote.unit_price,
                    segment.amount,
                    segment.period_start,
                    segment.period_end,
                    segment.late,
                )
            )
        return purchase_id

    async def schedule_removal(
        self, account_id: str, product: str, quantity: int, effective_on: date, after: Balance
    ) -> None:
        self._save(account_id, product, after)
        self.removals.append(_Removal(len(self.removals) + 1, account_id, product, quantity, effective_on))

    async def restore(self, account_id: str, product: str, quantity: int, day: date) -> None:
        left = quantity
        pending = [r for r in self._pending(account_id, product) if r.effective_on > day]
        for removal in sorted(pending, key=lambda r: (r.effective_on, r.id), reverse=True):
            take = min(left, removal.quantity)
            left -= take
            removal.quantity -= take
        self.removals = [r for r in self.removals if r.quantity > 0]

    async def accounts_for_seal(self, account_ids: list[str]) -> dict[str, license_storage.Account]:
        return {a: self.accounts[a] for a in account_ids if a in self.accounts}

    async def seal_inputs(self, ends: list[tuple[str, date]]) -> license_storage.SealInputs:
        due: dict[tuple[str, str], int] = {}
        later: dict[tuple[str, str], int] = {}
        for account_id, end in ends:
            for r in self.removals:
                if r.account_id == account_id and not r.applied and r.effective_on <= end:
                    due[(account_id, r.product)] = due.get((account_id, r.product), 0) + r.quantity
            for p in self.purchases:
                if p.account_id == account_id and p.purchase_day >= end:
                    later[(account_id, p.product)] = later.get((account_id, p.product), 0) + p.quantity_added
        accounts = {a for a, _ in ends}
        return license_storage.SealInputs(
            due,
            later,
            {key: b for key, b in self.balances.items() if key[0] in accounts},
            {
                (a, product): self.account_prices.get((a, product), price)
                for a in accounts
                for product, price in self.prices.items()
            },
        )

    async def save_balances(self, changed: dict[tuple[str, str], Balance]) -> None:
        self.balances.update(changed)

    async def finish_seals(self, seals: list[tuple[str, Cycle, Cycle]]) -> dict[str, list[Any]]:
        sealed: dict[str, list[Any]] = {}
        for account_id, cycle, following in seals:
            for r in self.removals:
                if r.account_id == account_id and not r.applied and r.effective_on <= cycle.end:
                    r.applied = True
            for charge in self.prorations:
                if charge.account_id == account_id and charge.sealed_in is None and charge.period_start < cycle.end:
                    charge.sealed_in = cycle.start
                    sealed.setdefault(account_id, []).append(charge)
            account = self.accounts[account_id]
            self.accounts[account_id] = license_storage.Account(account_id, account.billing_day, following)
        return sealed


# ---------------------------------------------------------------------------------------- usage metering
class FakeMeterStore:
    def __init__(self) -> None:
        self.seals = FakeSealLedger()
        self.accounts_by_id: dict[str, metering_storage.Account] = {}
        self.calls: set[tuple[str, str]] = set()
        self.ledger: list[metering_storage.Call] = []  # the calls as recorded, with their places and parts
        self.stored: dict[tuple[str, date], tuple[date, Meter, int]] = {}  # -> (cycle end, meter, position)
        self.recent_calls = metering_storage.RecentCalls(0)

    async def share_metering(self) -> None:
        pass

    async def own_metering(self) -> None:
        pass

    async def open_account(self, account_id: str, billing_day: int, cap: Decimal, first: Cycle) -> None:
        self.accounts_by_id.setdefault(account_id, metering_storage.Account(account_id, billing_day, cap, first))

    async def accounts(self, account_ids: Iterable[str], lock: bool = False) -> dict[str, metering_storage.Account]:
        return {a: self.accounts_by_id[a] for a in account_ids if a in self.accounts_by_id}

    async def accounts_for_calls(self, account_ids: Iterable[str]) -> dict[str, metering_storage.Account]:
        return await self.accounts(account_ids)  # the fake's accounts are always current

    async def set_cap(self, account_id: str, cap: Decimal) -> None:
        account = self.accounts_by_id[account_id]
        self.accounts_by_id[account_id] = account._replace(cap=cap, meter_epoch=account.meter_epoch + 1)

    async def recorded_before(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        return {key for key in keys if key in self.calls}

    def meters_in_memory(
        self, wanted: dict[tuple[str, date], metering_storage.Account]
    ) -> dict[tuple[str, date], metering_storage.Tracked]:
        return {}  # every meter is read from ``stored``, the fake's database

    async def meters_from_database(
        self, wanted: dict[tuple[str, date], tuple[metering_storage.Account, Cycle]]
    ) -> dict[tuple[str, date], metering_storage.Tracked]:
        found = {}
        for key, (account, cycle) in wanted.items():
            if key in self.stored:
                end, meter, position = self.stored[key]
                found[key] = metering_storage.Tracked(in_micros(meter), Cycle(cycle.start, end), position, position)
            else:
                found[key] = metering_storage.Tracked(in_micros(Meter(cap=account.cap)), cycle, 0, -1)
        return found

    async def record_calls(self, rows: list[metering_storage.Call]) -> set[tuple[str, str]]:
        found = {(row[0], row[1]) for row in rows if (row[0], row[1]) in self.calls}
        if not found:
            self.calls.update((row[0], row[1]) for row in rows)
            self.ledger.extend(rows)
        return found

    async def create_meters(self, new: list[tuple[str, metering_storage.Tracked]]) -> None:
        for account_id, tracked in new:
            self.stored.setdefault(
                (account_id, tracked.cycle.start), (tracked.cycle.end, Meter(cap=tracked.meter.cap), 0)
            )

    def remember(
        self,
        states: dict[tuple[str, date], metering_storage.Tracked],
        epochs: dict[str, int],
        charged: set[tuple[str, str]],
        stale: set[str],
        in_memory: bool,
    ) -> None:
        for key, tracked in states.items():  # no transaction to wait for
            self.stored[key] = (tracked.cycle.end, in_usd(tracked.meter), tracked.position)

    async def save_snapshots(self, meters: list[tuple[str, metering_storage.Tracked]]) -> set[tuple[str, date]]:
        return {(account_id, tracked.cycle.start) for account_id, tracked in meters}

    async def meters(self, keys: Iterable[tuple[str, date]]) -> dict[tuple[str, date], Meter]:
        return {key: self.stored[key][1] for key in keys if key in self.stored}

    async def save_meters(self, changed: dict[tuple[str, Cycle], Meter]) -> None:
        for (account_id, cycle), meter in changed.items():
            now = self.stored.get((account_id, cycle.start))
            self.stored[(account_id, cycle.start)] = (cycle.end, meter, now[2] if now else 0)

    async def late_meters_many(self, before: list[tuple[str, date]]) -> dict[str, list[tuple[Cycle, Meter]]]:
        found: dict[str, list[tuple[Cycle, Meter]]] = {}
        for account_id, start in before:
            for (a, cycle_start), (cycle_end, meter, _) in sorted(self.stored.items()):
                if a == account_id and cycle_start < start and meter.late_unbilled > 0:
                    found.setdefault(a, []).append((Cycle(cycle_start, cycle_end), meter))
        return found

    async def move_open_cycles(self, moves: list[tuple[str, Cycle]]) -> None:
        for account_id, cycle in moves:
            account = self.accounts_by_id[account_id]
            self.accounts_by_id[account_id] = account._replace(open_cycle=cycle, meter_epoch=account.meter_epoch + 1)

    def meter(self, account_id: str, cycle_start: date) -> Meter:
        return self.stored[(account_id, cycle_start)][1]


# ---------------------------------------------------------------------------------------- cycle close
@dataclass
class _Close:
    account_id: str
    cycle_start: date
    cycle_end: date
    trigger_id: uuid.UUID
    license_report: bytes | None = None
    usage_report: bytes | None = None


@dataclass(frozen=True)
class _CloseRow:
    account_id: str
    cycle_start: date
    cycle_end: date
    license_report: bytes | None
    usage_report: bytes | None
    invoice_id: uuid.UUID | None
    billing_day: int


class FakeCloseStore:
    def __init__(self) -> None:
        self.accounts: dict[str, BillingAccount] = {}
        self.chunks: dict[uuid.UUID, tuple[uuid.UUID, bool]] = {}
        self.closes: dict[tuple[str, date], _Close] = {}
        self.orders: dict[tuple[str, str], tuple[DeviceOrder, date | None]] = {}
        self.invoices: dict[uuid.UUID, m.InvoiceIssued] = {}

    async def open_account(self, account_id: str, billing_day: int, first: Cycle) -> None:
        self.accounts.setdefault(account_id, BillingAccount(account_id, billing_day, first))

    async def account_exists(self, account_id: str) -> bool:
        return account_id in self.accounts

    async def trigger_of(self, message_id: uuid.UUID) -> uuid.UUID:
        return self.chunks[message_id][0] if message_id in self.chunks else message_id

    async def record_chunk(self, message_id: uuid.UUID, trigger_id: uuid.UUID, finished: bool) -> None:
        self.chunks[message_id] = (self.chunks.get(message_id, (trigger_id, finished))[0], finished)

    async def accounts_due(self, as_of: date, account_ids: list[str] | None, limit: int) -> list[BillingAccount]:
        due = [
            a
            for a in self.accounts.values()
            if a.next_close.end <= as_of and (account_ids is None or a.account_id in account_ids)
        ]
        return sorted(due, key=lambda a: a.account_id)[:limit]

    async def request_closes(self, rows: list[tuple[str, Cycle]], trigger_id: uuid.UUID) -> set[tuple[str, date]]:
        new = set()
        for account_id, cycle in rows:
            if (account_id, cycle.start) not in self.closes:
                self.closes[(account_id, cycle.start)] = _Close(account_id, cycle.start, cycle.end, trigger_id)
                new.add((account_id, cycle.start))
        return new

    async def advance_accounts(self, rows: list[tuple[str, Cycle]]) -> None:
        for account_id, cycle in rows:
            self.accounts[account_id] = BillingAccount(account_id, self.accounts[account_id].billing_day, cycle)

    async def store_reports(self, column: str, reports: list[tuple[str, date, bytes]]) -> list[Any]:
        touched = []
        invoiced = {(v.account_id, v.cycle_start): v.invoice_id for v in self.invoices.values()}
        for account_id, start, report in reports:
            close = self.closes.get((account_id, start))
            if close is None or account_id not in self.accounts:
                continue
            if getattr(close, column) is None:
                setattr(close, column, report)
            touched.append(
                _CloseRow(
                    account_id,
                    start,
                    close.cycle_end,
                    close.license_report,
                    close.usage_report,
                    invoiced.get((account_id, start)),
                    self.accounts[account_id].billing_day,
                )
            )
        return touched

    async def take_device_orders_many(
        self, closes: list[tuple[str, Cycle]]
    ) -> dict[tuple[str, date], list[DeviceOrder]]:
        taken: dict[tuple[str, date], list[DeviceOrder]] = {}
        for account_id, cycle in closes:
            for (a, order_id), (order, invoiced_in) in self.orders.items():
                if a == account_id and invoiced_in is None and order.ordered_on < cycle.end:
                    self.orders[(a, order_id)] = (order, cycle.start)
                    taken.setdefault((account_id, cycle.start), []).append(order)
        for orders in taken.values():
            orders.sort(key=lambda o: (o.ordered_on, o.order_id))
        return taken

    async def save_invoices(self, invoices: list[m.InvoiceIssued]) -> set[uuid.UUID]:
        new = set()
        for invoice in invoices:
            taken = {(v.account_id, v.cycle_start) for v in self.invoices.values()}
            if invoice.invoice_id not in self.invoices and (invoice.account_id, invoice.cycle_start) not in taken:
                self.invoices[invoice.invoice_id] = invoice
                new.add(invoice.invoice_id)
        return new

    async def record_device_order(self, account_id: str, order: DeviceOrder) -> bool:
        if (account_id, order.order_id) in self.orders:
            return False
        self.orders[(account_id, order.order_id)] = (order, None)
        return True
