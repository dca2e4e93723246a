"""One account over several billing cycles: licenses, calling credits and cycle close together.

A hypothesis state machine drives the three pure domain modules the way the services do (no
I/O): license balances through ``services.license_orders.domain``, the cycle's meter through
``services.usage_metering.domain``, and each close's invoice through
``services.cycle_close.domain.invoice_lines`` from the ``LicenseCycleSealed`` and
``UsageCycleSealed`` reports the services would send. A small reference book, written here
without the domain modules, says what every license-day and every call should cost; the
invoices must add up to it after every close.

"Today" only moves forward and never past the open cycle's end, so the machine also visits the
day a cycle has ended but is not closed yet: purchases, removals, calls and cap changes dated
that day belong to the next cycle. Purchases, removals and calls may also arrive dated earlier
than today (sent before, handled now), in the open cycle or in one already closed (late).
"""

from __future__ import annotations

import calendar
import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from contracts import messages as m
from services.cycle_close import domain as invoicing
from services.license_orders import domain as licensing
from services.usage_metering import domain as metering
from shared.cycles import Cycle, cycle_containing, next_cycle
from shared.money import to_cents
from shared.rejections import Rejected

ACCOUNT = "acct-stateful"
PRODUCTS: tuple[m.Product, ...] = m.PRODUCTS
NAMESPACE = uuid.UUID("6f1c1f3e-2b1a-4d5e-9c59-0b8a7d4f0e11")

billing_days = st.sampled_from([1, 15, 28, 29, 30, 31])
first_days = st.dates(min_value=date(2026, 1, 1), max_value=date(2028, 12, 31))
unit_prices = st.sampled_from(["15.00", "20.00", "10.00", "9.99", "10.10", "0.17", "0.05"]).map(Decimal)
products = st.sampled_from(PRODUCTS)
license_quantities = st.integers(min_value=1, max_value=5)
call_costs = st.decimals(min_value=Decimal("0"), max_value=Decimal("120"), places=6)
caps = st.decimals(min_value=Decimal("0"), max_value=Decimal("500"), places=2)


# ------------------------------------------------------------------ the reference book


def half_up_to_the_cent(amount: Fraction) -> Fraction:
    """Round a non-negative exact amount half-up to the cent."""
    assert amount >= 0
    return Fraction(math.floor(amount * 100 + Fraction(1, 2)), 100)


def reference_cycle_of(billing_day: int, day: date) -> tuple[date, date]:
    """The cycle holding ``day``: from the latest cycle start on or before it to the next start.

    Cycle starts are the billing day of every month, or the month's last day when it is shorter.
    """
    starts = []
    for offset in range(-2, 3):
        index = day.year * 12 + day.month - 1 + offset
        year, month = divmod(index, 12)
        starts.append(date(year, month + 1, min(billing_day, calendar.monthrange(year, month + 1)[1])))
    start = max(s for s in starts if s <= day)
    end = min(s for s in starts if s > day)
    return start, end


@dataclass
class Removal:
    product: str
    effective_on: date
    quantity: int


@dataclass
class ReferenceBook:
    """What the account holds and owes, kept as plain purchases, removals and calls.

    A purchase or a call is billed on the invoice of the first close, among those after it was
    recorded, whose cycle ends after its date: the close of its own cycle, or the next close
    when it arrives late (its cycle was already closed).
    """

    billing_day: int
    prices: dict[str, Fraction]
    cap_changes: list[tuple[date, Fraction]] = field(default_factory=list)
    bought: list[tuple[str, date, int, int]] = field(default_factory=list)  # product, day, added, closes before
    removals: list[Removal] = field(default_factory=list)  # kept once applied: the history
    assignees: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PRODUCTS})
    closed: list[tuple[date, date]] = field(default_factory=list)
    calls: set[str] = field(default_factory=set)
    call_costs: dict[date, Fraction] = field(default_factory=dict)  # cycle start -> distinct calls' costs
    billable: dict[date, Fraction] = field(default_factory=dict)  # cycle start -> accrued up to the cap
    billed_calls: list[tuple[date, date, Fraction, int]] = field(default_factory=list)  # cycle, day, amount, closes

    def cycle_of(self, day: date) -> tuple[date, date]:
        return reference_cycle_of(self.billing_day, day)

    @property
    def applied_through(self) -> date | None:
        return self.closed[-1][1] if self.closed else None

    def _applied(self, removal: Removal) -> bool:
        return self.applied_through is not None and removal.effective_on <= self.applied_through

    def purchased(self, product: str) -> int:
        bought = sum(added for p, _, added, _ in self.bought if p == product)
        gone = sum(r.quantity for r in self.removals if r.product == product and self._applied(r))
        return bought - gone

    def scheduled(self, product: str) -> int:
        return sum(r.quantity for r in self.removals if r.product == product and not self._applied(r))

    def leaving_by(self, product: str, day: date) -> int:
        return sum(
            r.quantity for r in self.removals if r.product == product and not self._applied(r) and r.effective_on <= day
        )

    def available(self, product: str) -> int:
        return self.purchased(product) - len(self.assignees[product]) - self.scheduled(product)

    def restorable(self, product: str, day: date) -> int:
        return sum(
            r.quantity for r in self.removals if r.product == product and not self._applied(r) and r.effective_on > day
        )

    def buy(self, product: str, day: date, quantity: int) -> tuple[int, int]:
        """Take back pending removals first (latest first), buy the rest; return (restored, added)."""
        restored = min(quantity, self.restorable(product, day))
        left = restored
        for removal in sorted(self.removals, key=lambda r: r.effective_on, reverse=True):
            if left and removal.product == product and not self._applied(removal) and removal.effective_on > day:
                take = min(left, removal.quantity)
                removal.quantity -= take
                left -= take
        added = quantity - restored
        if added:
            self.bought.append((product, day, added, len(self.closed)))
        return restored, added

    def remove(self, product: str, day: date, quantity: int) -> date:
        """Leave at the end of the cycle of ``day``, or of the open cycle when that one is closed already."""
        effective_on = self.cycle_of(max(day, self.applied_through or day))[1]
        self.removals.append(Removal(product, effective_on, quantity))
        return effective_on

    def cap_for(self, cycle_end: date) -> Fraction:
        """The cap in force at the end of a cycle: the last one set before it ended."""
        caps = [cap for day, cap in self.cap_changes if day < cycle_end]
        return caps[-1] if caps else Fraction(250)

    def charge(self, call_id: str, day: date, cost: Fraction) -> None:
        if call_id in self.calls:
            return
        self.calls.add(call_id)
        start, end = self.cycle_of(day)
        so_far = self.billable.get(start, Fraction(0))
        billed = min(cost, max(Fraction(0), self.cap_for(end) - so_far))
        self.billable[start] = so_far + billed
        self.call_costs[start] = self.call_costs.get(start, Fraction(0)) + cost
        self.billed_calls.append((start, day, billed, len(self.closed)))

    def billed_on(self, day: date, closes_before: int) -> int | None:
        """Which close's invoice bills something dated ``day`` recorded after ``closes_before`` closes."""
        for index in range(closes_before, len(self.closed)):
            if self.closed[index][1] > day:
                return index
        return None

    def invoiced(self) -> Fraction:
        """Everything the closed cycles' invoices must charge together.

        Each purchase: its own cycle from the purchase day, half-up to the cent. Each closed
        cycle: every license held from the start of the next cycle (bought before it, not
        removed by then) at the unit price, in advance. Calls: up to the cap in force, one
        amount per invoice and cycle, half-up to the cent.
        """
        amount = Fraction(0)
        billed_purchases = [
            (product, day, added)
            for product, day, added, before in self.bought
            if self.billed_on(day, before) is not None
        ]
        for product, day, added in billed_purchases:
            start, end = self.cycle_of(day)
            amount += half_up_to_the_cent(self.prices[product] * added * (end - day).days / (end - start).days)
        for _, end in self.closed:
            for product in PRODUCTS:
                held = sum(a for p, d, a in billed_purchases if p == product and d < end) - sum(
                    r.quantity for r in self.removals if r.product == product and r.effective_on <= end
                )
                amount += self.prices[product] * held
        per_line: dict[tuple[int, date], Fraction] = {}
        for start, day, billed, before in self.billed_calls:
            index = self.billed_on(day, before)
            if index is not None:
                per_line[(index, start)] = per_line.get((index, start), Fraction(0)) + billed
        return amount + sum((half_up_to_the_cent(line) for line in per_line.values()), Fraction(0))


# ------------------------------------------------------------------ the services' state, domain-driven


@dataclass
class Purchase:
    product: m.Product
    day: date
    quote: licensing.PurchaseQuote
    purchase_id: uuid.UUID
    sealed: set[int] = field(default_factory=set)  # indexes of segments already on an invoice


@dataclass
class CycleMeter:
    """One cycle's meter, with what the machine saw happen to it."""

    cycle: Cycle
    meter: metering.Meter
    highest_cap: Decimal
    costs: Decimal = Decimal("0")
    alerts_since_cap_change: list[metering.Alert] = field(default_factory=list)
    fired: set[int] = field(default_factory=set)  # thresholds alerted and not re-armed by a cap change since

    def hear(self, alerts: list[metering.Alert]) -> None:
        """Operations hear each threshold once, until a new cap puts it ahead again."""
        for alert in alerts:
            if alert.kind == "threshold":
                assert alert.threshold_percent is not None
                assert alert.threshold_percent not in self.fired, f"{alert.threshold_percent} % alerted twice"
                self.fired.add(alert.threshold_percent)
        self.alerts_since_cap_change += alerts

    def rearm(self, cap: Decimal) -> None:
        self.fired = {p for p in self.fired if self.meter.billable * 100 >= cap * p}
        self.alerts_since_cap_change = []


@dataclass
class Invoice:
    cycle: Cycle
    lines: list[m.InvoiceLine]
    total: Decimal


def business_time(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 0, 5, tzinfo=UTC)


class OneAccountOverSeveralCycles(RuleBasedStateMachine):
    """License orders, usage metering and cycle close of one account, through their domain rules."""

    def __init__(self) -> None:
        super().__init__()
        self.started = False
        self.billing_day = 1
        self.first_day = self.today = date(2026, 1, 1)
        self.open_cycle = cycle_containing(1, self.today)
        self.prices: dict[m.Product, Decimal] = {}
        self.balances: dict[m.Product, licensing.Balance] = {p: licensing.Balance() for p in PRODUCTS}
        self.assignees: dict[m.Product, set[str]] = {p: set() for p in PRODUCTS}
        self.removals: list[Removal] = []  # pending ones, with the date they take effect
        self.purchases: list[Purchase] = []
        self.account_cap = metering.DEFAULT_CAP
        self.current = CycleMeter(self.open_cycle, metering.Meter(cap=self.account_cap), self.account_cap)
        self.upcoming: CycleMeter | None = None  # calls and cap changes dated the day the open cycle ended
        self.sealed_meters: list[CycleMeter] = []
        self.platform_blocks_calls = False  # what the blocked / unblocked alerts told the platform
        self.charged_calls: list[str] = []
        self.known_assignees: list[str] = []
        self.invoices: list[Invoice] = []
        self.counter = 0
        self.reference = ReferenceBook(1, {})

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def message_id(self, part: str) -> uuid.UUID:
        return uuid.uuid5(NAMESPACE, self.next_id(part))

    def earlier_day(self, data: st.DataObject) -> date:
        """A day since the account opened and before today: in the open cycle or in a closed one."""
        back = data.draw(st.integers(min_value=1, max_value=(self.today - self.first_day).days), label="days back")
        return self.today - timedelta(days=back)

    # -------------------------------------------------------------- setup

    @initialize(billing_day=billing_days, first_day=first_days, prices=st.tuples(*[unit_prices] * len(PRODUCTS)))
    def open_the_account(self, billing_day: int, first_day: date, prices: tuple[Decimal, ...]) -> None:
        self.started = True
        self.billing_day = billing_day
        self.first_day = self.today = first_day
        self.open_cycle = cycle_containing(billing_day, first_day)
        self.current = CycleMeter(self.open_cycle, metering.Meter(cap=self.account_cap), self.account_cap)
        self.prices = dict(zip(PRODUCTS, prices, strict=True))
        self.reference = ReferenceBook(billing_day, {p: Fraction(price) for p, price in self.prices.items()})
        assert self.reference.cycle_of(first_day) == (self.open_cycle.start, self.open_cycle.end)

    # -------------------------------------------------------------- licenses

    def restorable(self, product: str, day: date) -> int:
        """Removals still pending on ``day`` (what the license store's ``restorable`` returns)."""
        return sum(r.quantity for r in self.removals if r.product == product and r.effective_on > day)

    def purchase(self, product: m.Product, quantity: int, day: date) -> licensing.PurchaseQuote:
        """What license orders does with a preview and then a ``PurchaseLicenses`` dated ``day``."""
        balance = self.balances[product]
        arguments = (balance, quantity, self.prices[product], day, self.billing_day, self.open_cycle)
        preview = licensing.quote_purchase(*arguments, self.restorable(product, day))
        confirmation = licensing.quote_purchase(*arguments, self.restorable(product, day))
        assert confirmation == preview, "the confirmation charges what the preview showed"

        after = licensing.apply_purchase(balance, confirmation)
        left = confirmation.quantity_restored
        for removal in sorted(self.removals, key=lambda r: r.effective_on, reverse=True):
            if left and removal.product == product and removal.effective_on > day:
                take = min(left, removal.quantity)
                removal.quantity -= take
                left -= take
        assert left == 0
        self.removals = [r for r in self.removals if r.quantity]
        self.balances[product] = after
        if confirmation.quantity_added:
            self.purchases.append(Purchase(product, day, confirmation, self.message_id("purchase")))

        restored, added = self.reference.buy(product, day, quantity)
        assert (confirmation.quantity_restored, confirmation.quantity_added) == (restored, added)
        assert confirmation.quantity_restored + confirmation.quantity_added == quantity
        assert confirmation.recurring_amount_per_cycle == self.prices[product] * quantity
        assert all(segment.amount == to_cents(segment.amount) for segment in confirmation.segments)
        if confirmation.quantity_restored and confirmation.quantity_added:
            event("a purchase restores some licenses and buys the rest")
        return confirmation

    @rule(product=products, quantity=license_quantities)
    def buy_licenses(self, product: m.Product, quantity: int) -> None:
        quote = self.purchase(product, quantity, self.today)

        assert not any(segment.late for segment in quote.segments)
        if self.today == self.open_cycle.end:
            event("a purchase dated the day the open cycle ended")
            assert all(s.period_start == self.open_cycle.end for s in quote.segments)

    @precondition(lambda self: self.today > self.first_day)
    @rule(product=products, quantity=license_quantities, data=st.data())
    def buy_licenses_reported_late(self, product: m.Product, quantity: int, data: st.DataObject) -> None:
        day = self.earlier_day(data)

        quote = self.purchase(product, quantity, day)

        late = day < self.open_cycle.start
        assert all(segment.late == late for segment in quote.segments)
        if late and quote.segments:
            event("a purchase dated in a closed cycle")
            assert quote.segments[-1].period_end == self.open_cycle.end

    @precondition(lambda self: any(self.restorable(p, self.today) for p in PRODUCTS))
    @rule(data=st.data())
    def restore_licenses_scheduled_for_removal(self, data: st.DataObject) -> None:
        product = data.draw(st.sampled_from([p for p in PRODUCTS if self.restorable(p, self.today)]))
        quantity = data.draw(st.integers(min_value=1, max_value=self.restorable(product, self.today)))
        purchased_before = self.balances[product].purchased

        quote = self.purchase(product, quantity, self.today)

        assert (quote.quantity_restored, quote.quantity_added) == (quantity, 0)
        assert quote.prorated_amount == 0
        assert self.balances[product].purchased == purchased_before

    def remove(self, product: m.Product, quantity: int, day: date) -> None:
        """What license orders does with a ``RemoveLicenses`` dated ``day``."""
        balance = self.balances[product]
        held = self.held_before(product, day)  # what license orders reads from its tables
        removable = max(0, min(self.reference.available(product), held))
        if quantity > removable:
            with pytest.raises(Rejected) as refused:
                licensing.schedule_removal(
                    balance, product, quantity, day, self.billing_day, self.open_cycle, held_at_end=held
                )
            assert refused.value.reason_code == "insufficient_available_licenses"
            assert f"only {removable} " in refused.value.reason
            event("a removal of more than the removable licenses is refused")
            return

        after, effective_on = licensing.schedule_removal(
            balance, product, quantity, day, self.billing_day, self.open_cycle, held_at_end=held
        )

        assert effective_on == self.reference.remove(product, day, quantity)
        assert effective_on in (self.open_cycle.end, next_cycle(self.billing_day, self.open_cycle).end)
        assert effective_on > day
        assert after.scheduled_for_removal == balance.scheduled_for_removal + quantity
        self.balances[product] = after
        self.removals.append(Removal(product, effective_on, quantity))

    @rule(product=products, data=st.data())
    def remove_licenses(self, product: m.Product, data: st.DataObject) -> None:
        available = self.reference.available(product)
        self.remove(product, data.draw(st.integers(min_value=1, max_value=available + 1), label="quantity"), self.today)

    def held_before(self, product: str, day: date) -> int:
        """Licenses a removal dated ``day`` can take: bought before it takes effect, not leaving by then.

        A removal dated before the open cycle's end, handled after a purchase dated on or after
        that end, must not take away a license that was never held before the removal takes
        effect (``test_a_removal_dated_before_the_cycle_end_never_removes_a_license_bought_after_it``);
        license orders passes this count to ``schedule_removal`` as ``held_at_end``.
        """
        book = self.reference
        effective_on = book.cycle_of(max(day, book.applied_through or day))[1]
        bought_after = sum(a for p, d, a, _ in book.bought if p == product and d >= effective_on)
        return book.purchased(product) - bought_after - book.leaving_by(product, effective_on)

    @precondition(lambda self: self.today > self.first_day)
    @rule(product=products, data=st.data())
    def remove_licenses_reported_late(self, product: m.Product, data: st.DataObject) -> None:
        day = self.earlier_day(data)
        available = self.reference.available(product)
        if min(available, self.held_before(product, day)) < available:
            event("a late removal is held to the licenses bought before it takes effect")
        self.remove(product, data.draw(st.integers(min_value=1, max_value=available + 1), label="quantity"), day)
        if day < self.open_cycle.start:
            event("a removal dated in a closed cycle")

    @rule(product=products, data=st.data())
    def assign_a_license(self, product: m.Product, data: st.DataObject) -> None:
        assignee = data.draw(st.sampled_from([*self.known_assignees, "new"]), label="assignee")
        if assignee == "new":
            assignee = self.next_id("assignee")
            self.known_assignees.append(assignee)
        held = assignee in self.assignees[product]
        balance = self.balances[product]

        if held or self.reference.available(product) < 1:
            with pytest.raises(Rejected) as refused:
                licensing.assign(balance, product, held)
            assert refused.value.reason_code == ("already_assigned" if held else "no_license_available")
            event(f"an assignment is refused: {refused.value.reason_code}")
            return

        self.balances[product] = licensing.assign(balance, product, held)
        self.assignees[product].add(assignee)
        self.reference.assignees[product].add(assignee)

    @rule(product=products, data=st.data())
    def unassign_a_license(self, product: m.Product, data: st.DataObject) -> None:
        assignee = data.draw(st.sampled_from([*self.known_assignees, "nobody"]), label="assignee")
        held = assignee in self.assignees[product]
        balance = self.balances[product]

        if not held:
            with pytest.raises(Rejected) as refused:
                licensing.unassign(balance, product, held)
            assert refused.value.reason_code == "not_assigned"
            return

        self.balances[product] = licensing.unassign(balance, product, held)
        self.assignees[product].discard(assignee)
        self.reference.assignees[product].discard(assignee)

    # -------------------------------------------------------------- calling credits

    def meter_of(self, day: date) -> CycleMeter:
        """The meter of the cycle ``day`` falls in: a closed one, the open one, or the next one."""
        cycle = cycle_containing(self.billing_day, day)
        if cycle < self.open_cycle:
            (sealed,) = [state for state in self.sealed_meters if state.cycle == cycle]
            return sealed
        if cycle == self.open_cycle:
            return self.current
        assert day == self.open_cycle.end
        if self.upcoming is None:
            self.upcoming = CycleMeter(cycle, metering.Meter(cap=self.account_cap), self.account_cap)
        return self.upcoming

    def hear(self, state: CycleMeter, alerts: list[metering.Alert]) -> None:
        state.hear(alerts)
        for alert in alerts:
            if alert.kind in ("blocked", "unblocked"):
                self.platform_blocks_calls = alert.kind == "blocked"

    def charge(self, call_id: str, cost: Decimal, day: date) -> None:
        """What usage metering does with a ``CallCharged``: one charge per call id, however often reported."""
        self.reference.charge(call_id, day, Fraction(cost))
        if call_id in self.charged_calls:
            return
        self.charged_calls.append(call_id)
        state = self.meter_of(day)
        if state.cycle < self.open_cycle:
            state.meter = metering.accrue_late(state.meter, cost)
            event("a call dated in a closed cycle")
        else:
            state.meter, alerts = metering.accrue(state.meter, cost)
            self.hear(state, alerts)
        state.costs += cost

    @rule(cost=call_costs)
    def charge_a_new_call(self, cost: Decimal) -> None:
        self.charge(self.next_id("call"), cost, self.today)

    @precondition(lambda self: self.today > self.first_day)
    @rule(cost=call_costs, data=st.data())
    def charge_a_new_call_reported_late(self, cost: Decimal, data: st.DataObject) -> None:
        self.charge(self.next_id("call"), cost, self.earlier_day(data))

    @precondition(lambda self: bool(self.charged_calls))
    @rule(data=st.data(), cost=call_costs)
    def report_a_charged_call_again(self, data: st.DataObject, cost: Decimal) -> None:
        call_id = data.draw(st.sampled_from(self.charged_calls), label="call_id")
        before = [(state.meter, state.costs) for state in (self.current, self.upcoming, *self.sealed_meters) if state]

        self.charge(call_id, cost, self.today)

        after = [(state.meter, state.costs) for state in (self.current, self.upcoming, *self.sealed_meters) if state]
        assert after == before

    @rule(cap=caps)
    def support_changes_the_cap(self, cap: Decimal) -> None:
        metering.authorize_cap_change("support")
        state = self.meter_of(self.today)
        before = state.meter
        state.rearm(cap)
        state.meter, alerts = metering.change_cap(state.meter, cap)
        state.highest_cap = max(state.highest_cap, cap)
        self.hear(state, alerts)
        self.account_cap = cap
        self.reference.cap_changes.append((self.today, Fraction(cap)))

        assert state.meter.billable == before.billable, "a new cap never un-bills what was accrued"
        if before.blocked and not state.meter.blocked:
            assert [a.reason for a in alerts if a.kind == "unblocked"] == ["cap_raised"]
        if cap < before.billable:
            event("the cap is lowered below the accrual")

    # -------------------------------------------------------------- time and cycle close

    @rule(days=st.integers(min_value=0, max_value=10))
    def let_days_pass(self, days: int) -> None:
        self.today = min(self.today + timedelta(days=days), self.open_cycle.end)

    @rule()
    def let_the_open_cycle_end_without_closing_it(self) -> None:
        self.today = self.open_cycle.end

    def licenses_sealed(self, cycle: Cycle, following: Cycle) -> m.LicenseCycleSealed:
        """License orders' seal: apply the removals due, charge the kept licenses ahead, report prorations."""
        recurring: list[m.RecurringCharge] = []
        for product in PRODUCTS:
            removing = sum(r.quantity for r in self.removals if r.product == product and r.effective_on <= cycle.end)
            bought_later = sum(
                p.quote.quantity_added for p in self.purchases if p.product == product and p.day >= cycle.end
            )
            after, kept = licensing.seal(self.balances[product], removing, bought_later)
            assert after.scheduled_for_removal >= 0
            assert kept >= 0
            self.balances[product] = after
            if kept > 0:
                price = self.prices[product]
                recurring.append(
                    m.RecurringCharge(
                        product=product,
                        quantity=kept,
                        unit_price=price,
                        amount=price * kept,
                        period_start=following.start,
                        period_end=following.end,
                    )
                )
        self.removals = [r for r in self.removals if r.effective_on > cycle.end]

        prorations: list[m.ProrationCharge] = []
        for purchase in self.purchases:
            for index, segment in enumerate(purchase.quote.segments):
                if index not in purchase.sealed and segment.period_start < cycle.end:
                    purchase.sealed.add(index)
                    prorations.append(
                        m.ProrationCharge(
                            purchase_id=purchase.purchase_id,
                            product=purchase.product,
                            quantity=purchase.quote.quantity_added,
                            unit_price=purchase.quote.unit_price,
                            amount=segment.amount,
                            period_start=segment.period_start,
                            period_end=segment.period_end,
                            late=segment.late,
                        )
                    )
        return m.LicenseCycleSealed(
            message_id=self.message_id("licenses-sealed"),
            account_id=ACCOUNT,
            occurred_at=business_time(cycle.end),
            cycle_start=cycle.start,
            cycle_end=cycle.end,
            recurring=recurring,
            prorations=prorations,
        )

    def usage_sealed(self, cycle: Cycle) -> m.UsageCycleSealed:
        """Usage metering's seal: the cycle's accrual, and earlier cycles' late usage (then zeroed)."""
        late: list[m.LateUsage] = []
        for state in sorted(self.sealed_meters, key=lambda s: s.cycle):
            if state.meter.late_unbilled > 0:
                late.append(
                    m.LateUsage(
                        cycle_start=state.cycle.start, cycle_end=state.cycle.end, amount=state.meter.late_unbilled
                    )
                )
                state.meter = state.meter._replace(late_unbilled=metering.ZERO)
        closing = self.current.meter
        return m.UsageCycleSealed(
            message_id=self.message_id("usage-sealed"),
            account_id=ACCOUNT,
            occurred_at=business_time(cycle.end),
            cycle_start=cycle.start,
            cycle_end=cycle.end,
            cap=closing.cap,
            accrued=closing.billable,
            over_cap=closing.over_cap,
            late=late,
        )

    @rule()
    def close_the_cycle(self) -> None:
        invoicing.authorize_close("service")
        cycle = self.open_cycle
        following = next_cycle(self.billing_day, cycle)
        assert following.start == cycle.end

        licenses = self.licenses_sealed(cycle, following)
        usage = self.usage_sealed(cycle)
        lines = invoicing.invoice_lines(cycle, licenses, usage, [])
        invoice = Invoice(cycle, lines, invoicing.total(lines))
        self.invoices.append(invoice)

        closing = self.current
        upcoming = self.upcoming or CycleMeter(following, metering.Meter(cap=self.account_cap), self.account_cap)
        upcoming.meter, alerts = metering.start_cycle(closing.meter, upcoming.meter)
        self.hear(upcoming, alerts)
        if closing.meter.blocked and not upcoming.meter.blocked:
            assert [a.reason for a in alerts if a.kind == "unblocked"] == ["new_cycle"]
        closing.meter = closing.meter._replace(blocked=False)
        self.sealed_meters.append(closing)
        self.current, self.upcoming = upcoming, None
        self.open_cycle = following
        self.today = following.start
        self.reference.closed.append((cycle.start, cycle.end))

        assert invoice.total == sum((line.amount for line in lines), Decimal("0"))
        assert all(line.amount == to_cents(line.amount) and line.amount >= 0 for line in lines)
        assert all(line.kind != "calling_credits" or line.amount > 0 for line in lines)
        recurring = [line for line in lines if line.kind == "recurring"]
        assert all((line.period_start, line.period_end) == (following.start, following.end) for line in recurring)
        assert len({line.product for line in recurring}) == len(recurring)
        assert all(line.late == (line.period_end <= cycle.start) for line in lines if line.kind == "calling_credits")
        event(f"{min(len(self.invoices), 4)}+ cycles closed")
        if any(line.late for line in lines):
            event("an invoice with a late line")
        self.invoices_add_up_to_the_reference()

    def invoices_add_up_to_the_reference(self) -> None:
        invoiced = sum((invoice.total for invoice in self.invoices), Decimal("0"))
        expected = self.reference.invoiced()
        assert Fraction(invoiced) == expected, f"invoiced {invoiced}, the reference says {float(expected):.2f}"

    # -------------------------------------------------------------- invariants

    @invariant()
    def assigned_licenses_never_exceed_those_kept(self) -> None:
        for product in PRODUCTS:
            balance = self.balances[product]
            balance.check()
            assert 0 <= balance.assigned <= balance.purchased - balance.scheduled_for_removal
            assert balance.assigned == len(self.assignees[product])

    @invariant()
    def balances_match_the_reference(self) -> None:
        for product in PRODUCTS:
            balance = self.balances[product]
            assert balance.purchased == self.reference.purchased(product), product
            assert balance.scheduled_for_removal == self.reference.scheduled(product), product
            assert balance.available == self.reference.available(product), product

    @invariant()
    def today_stays_in_the_open_cycle_or_on_its_end(self) -> None:
        assert self.open_cycle.start <= self.today <= self.open_cycle.end

    def live_meters(self) -> list[CycleMeter]:
        return [self.current] if self.upcoming is None else [self.current, self.upcoming]

    @invariant()
    def accrual_never_exceeds_the_highest_cap_and_keeps_every_cent_of_the_calls(self) -> None:
        for state in [*self.live_meters(), *self.sealed_meters]:
            meter = state.meter
            assert 0 <= meter.billable <= state.highest_cap
            assert meter.over_cap >= 0
            assert meter.billable + meter.over_cap == state.costs
            assert Fraction(state.costs) == self.reference.call_costs.get(state.cycle.start, Fraction(0))
            assert Fraction(meter.billable) == self.reference.billable.get(state.cycle.start, Fraction(0))

    @invariant()
    def each_threshold_alerts_at_most_once_between_cap_changes(self) -> None:
        for state in self.live_meters():
            thresholds = Counter(a.threshold_percent for a in state.alerts_since_cap_change if a.kind == "threshold")
            assert all(count == 1 for count in thresholds.values()), thresholds
            assert set(thresholds) <= set(metering.THRESHOLDS)
            assert len([a for a in state.alerts_since_cap_change if a.kind == "blocked"]) <= 1
            for percent in state.meter.alerted:
                assert state.meter.billable * 100 >= state.meter.cap * percent

    @invariant()
    def thresholds_reached_are_exactly_those_alerted(self) -> None:
        for state in self.live_meters():
            reached = {p for p in metering.THRESHOLDS if state.meter.billable * 100 >= state.meter.cap * p}
            assert state.fired == reached == set(state.meter.alerted), (state.fired, state.meter)

    @invariant()
    def calling_is_blocked_exactly_when_the_accrual_reaches_the_cap(self) -> None:
        for state in self.live_meters():
            assert state.meter.blocked == (state.meter.billable >= state.meter.cap), state.meter
        if self.today < self.open_cycle.end:  # on the end day the next cycle's meter may speak first
            assert self.platform_blocks_calls == self.current.meter.blocked

    def teardown(self) -> None:
        if self.started:
            self.invoices_add_up_to_the_reference()
            assert len(self.invoices) == len(self.reference.closed)
            assert len({invoice.cycle for invoice in self.invoices}) == len(self.invoices)


OneAccountOverSeveralCycles.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestOneAccountOverSeveralCyclesIsBilledEveryLicenseDayAndCallOnce = OneAccountOverSeveralCycles.TestCase


def test_the_reference_cycles_agree_with_the_shared_cycle_dates() -> None:
    for billing_day in (1, 15, 28, 29, 30, 31):
        day = date(2026, 12, 20)
        while day < date(2029, 3, 15):
            cycle = cycle_containing(billing_day, day)
            assert reference_cycle_of(billing_day, day) == (cycle.start, cycle.end), (billing_day, day)
            day += timedelta(days=3)


def test_the_reference_rounds_half_a_cent_up() -> None:
    assert half_up_to_the_cent(Fraction("2.525")) == Fraction("2.53")
    assert half_up_to_the_cent(Fraction("0.0425")) == Fraction("0.04")
    assert half_up_to_the_cent(Fraction(0)) == 0


def test_a_removal_dated_before_the_cycle_end_never_removes_a_license_bought_after_it() -> None:
    """January is open; a purchase dated Feb 1 is handled, then a removal dated Jan 31 (sent before it).

    On Jan 31 the account held no license, yet ``schedule_removal`` accepts the removal (the
    Feb 1 license is available) and makes it leave on Feb 1. Closing January, ``seal`` gets
    1 removal due and 1 license bought on or after the end and returns ``kept == -1`` (license
    orders bills no recurring line for it), and February's invoice still charges the Feb 1
    purchase's 15.00 proration for a license that left on Feb 1: a month billed, no day held.
    Either refusing the removal or letting it take effect when that license's first cycle
    ends (Mar 1) would bill every license-day once.
    """
    january = Cycle(date(2026, 1, 1), date(2026, 2, 1))
    february = next_cycle(1, january)
    price = Decimal("15.00")

    bought = licensing.quote_purchase(licensing.Balance(), 1, price, february.start, 1, january, restorable=0)
    balance = licensing.apply_purchase(licensing.Balance(), bought)
    try:
        # held at Jan 31's cycle end: none (the one license was bought on Feb 1)
        balance, effective_on = licensing.schedule_removal(
            balance, "user", 1, date(2026, 1, 31), 1, january, held_at_end=0
        )
    except Rejected:
        return  # refused: on Jan 31 there was no license to remove
    balance.check()

    removing = 1 if effective_on <= january.end else 0
    balance, kept = licensing.seal(balance, removing, bought_on_or_after_end=1)
    assert kept >= 0, f"seal keeps {kept} licenses into February"
    billed = price * kept + bought.prorated_amount  # January's recurring line + February's proration line
    months_held = 1 if effective_on > february.start else 0
    assert billed == price * months_held, f"billed {billed} for {months_held} months held"
