"""License rules as pure functions (no I/O): balances, proration, removals, seats, roles.

Rules: ``shared/spec/domain.md`` (Licenses). Decisions this module adds, documented in
``docs/architecture.md`` and ``docs/cycle-close.md``: a purchase or removal whose business date falls in a cycle that
is already sealed is "late": its charge runs from its date across every already-billed cycle
up to the end of the open cycle, so each license-day is still billed exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal

from shared.cycles import Cycle, cycle_containing, next_cycle
from shared.money import to_cents
from shared.rejections import Rejected

PRODUCT_NAMES = {
    "user": "user",
    "room_phone": "room phone",
    "shared_line": "shared-line number",
    "fax": "fax number",
}

ALLOWED_ROLES: dict[str, frozenset[str]] = {
    "PreviewLicensePurchase": frozenset({"office_admin"}),
    "PurchaseLicenses": frozenset({"office_admin"}),
    "RemoveLicenses": frozenset({"office_admin"}),
    "AssignLicense": frozenset({"service", "office_admin"}),
    "UnassignLicense": frozenset({"service", "office_admin"}),
}


def authorize(command_type: str, role: str) -> None:
    allowed = ALLOWED_ROLES.get(command_type, frozenset())
    if role not in allowed:
        raise Rejected(
            "not_authorized",
            f"the {role} role may not {command_type}; it takes one of: {', '.join(sorted(allowed))}",
        )


@dataclass(frozen=True)
class Balance:
    purchased: int = 0
    assigned: int = 0
    scheduled_for_removal: int = 0

    @property
    def available(self) -> int:
        return max(0, self.purchased - self.assigned - self.scheduled_for_removal)

    def check(self) -> None:
        """The invariant that must hold at every moment."""
        assert 0 <= self.assigned <= self.purchased - self.scheduled_for_removal, self
        assert self.scheduled_for_removal >= 0


@dataclass(frozen=True)
class ProrationSegment:
    period_start: date
    period_end: date
    amount: Decimal
    late: bool


@dataclass(frozen=True)
class PurchaseQuote:
    """What a purchase does: shown by the preview, charged identically by the confirmation."""

    quantity: int
    quantity_restored: int
    quantity_added: int
    unit_price: Decimal
    segments: tuple[ProrationSegment, ...]
    cycle: Cycle

    @property
    def prorated_amount(self) -> Decimal:
        return sum((s.amount for s in self.segments), Decimal("0.00"))

    @property
    def recurring_amount_per_cycle(self) -> Decimal:
        # Restored licenses count too: without the restore they would have stopped.
        return self.unit_price * self.quantity


def prorate(unit_price: Decimal, quantity: int, remaining_days: int, cycle_days: int) -> Decimal:
    """``unit_price * quantity * remaining_days / cycle_days``, half-up to the cent."""
    return to_cents(unit_price * quantity * remaining_days / Decimal(cycle_days))


def proration_segments(
    unit_price: Decimal, added: int, purchase_day: date, billing_day: int, open_cycle: Cycle
) -> tuple[ProrationSegment, ...]:
    """The charges for ``added`` new licenses bought on ``purchase_day``.

    Normally one segment: the rest of the purchase's cycle. When that cycle is already
    sealed (a late purchase), the cycles after it up to the open one were already billed
    in advance without these licenses, so each of them is charged in full as well.
    """
    own = cycle_containing(billing_day, purchase_day)
    late = own < open_cycle
    segments = [
        ProrationSegment(
            purchase_day, own.end, prorate(unit_price, added, (own.end - purchase_day).days, own.days), late
        )
    ]
    cycle = own
    while cycle.end <= open_cycle.start:
        cycle = next_cycle(billing_day, cycle)
        segments.append(ProrationSegment(cycle.start, cycle.end, to_cents(unit_price * added), True))
    return tuple(segments)


def quote_purchase(
    balance: Balance,
    quantity: int,
    unit_price: Decimal,
    purchase_day: date,
    billing_day: int,
    open_cycle: Cycle,
    restorable: int | None = None,
) -> PurchaseQuote:
    """``restorable``: scheduled removals still pending on ``purchase_day`` (default: all of them).

    A removal whose date has passed (its cycle ended, the close has not run yet) is gone in
    business time, so a purchase dated after it buys new licenses rather than restoring it.
    """
    check_quantity(quantity)
    pending = balance.scheduled_for_removal if restorable is None else min(restorable, balance.scheduled_for_removal)
    restored = min(quantity, pending)
    added = quantity - restored
    segments = proration_segments(unit_price, added, purchase_day, billing_day, open_cycle) if added else ()
    return PurchaseQuote(
        quantity, restored, added, unit_price, segments, max(cycle_containing(billing_day, purchase_day), open_cycle)
    )


def apply_purchase(balance: Balance, quote: PurchaseQuote) -> Balance:
    return replace(
        balance,
        purchased=balance.purchased + quote.quantity_added,
        scheduled_for_removal=balance.scheduled_for_removal - quote.quantity_restored,
    )


def removal_effective_on(removal_day: date, billing_day: int, open_cycle: Cycle) -> date:
    """A removal takes effect at the end of its cycle, or of the open cycle if its own is sealed."""
    return max(cycle_containing(billing_day, removal_day), open_cycle).end


def schedule_removal(
    balance: Balance,
    product: str,
    quantity: int,
    removal_day: date,
    billing_day: int,
    open_cycle: Cycle,
    held_at_end: int | None = None,
) -> tuple[Balance, date]:
    """Schedule ``quantity`` available licenses to leave at the end of the current cycle.

    ``held_at_end``: licenses bought before that end and not already leaving then. A license
    bought on or after it (dated in a later cycle, the close not run yet) cannot leave before
    it was held, so it is not removable by this removal.
    """
    check_quantity(quantity)
    removable = balance.available if held_at_end is None else max(0, min(balance.available, held_at_end))
    if quantity > removable:
        name = PRODUCT_NAMES.get(product, product)
        raise Rejected(
            "insufficient_available_licenses",
            f"only {removable} of your {balance.purchased} {name} licenses are unassigned and not "
            f"already scheduled for removal; unassign some before removing more than {removable}",
        )
    effective_on = removal_effective_on(removal_day, billing_day, open_cycle)
    return replace(balance, scheduled_for_removal=balance.scheduled_for_removal + quantity), effective_on


def assign(balance: Balance, product: str, already_assigned: bool) -> Balance:
    name = PRODUCT_NAMES.get(product, product)
    if already_assigned:
        raise Rejected("already_assigned", f"this {name} already holds a license; nothing was taken")
    if balance.available < 1:
        raise Rejected(
            "no_license_available",
            f"all {balance.purchased} {name} licenses are in use or scheduled for removal; buy or restore one first",
        )
    return replace(balance, assigned=balance.assigned + 1)


def unassign(balance: Balance, product: str, is_assigned: bool) -> Balance:
    if not is_assigned:
        raise Rejected("not_assigned", f"this {PRODUCT_NAMES.get(product, product)} holds no license")
    return replace(balance, assigned=balance.assigned - 1)


def seal(balance: Balance, removing: int, bought_on_or_after_end: int) -> tuple[Balance, int]:
    """Close a cycle for one product: apply its removals; return the licenses kept into the next cycle.

    ``bought_on_or_after_end`` are licenses already bought with a date in a later cycle: they
    are prorated there, so the next cycle's recurring line leaves them out.
    """
    after = replace(
        balance,
        purchased=balance.purchased - removing,
        scheduled_for_removal=balance.scheduled_for_removal - removing,
    )
    return after, after.purchased - bought_on_or_after_end


@dataclass(frozen=True)
class RecurringCharge:
    """What the licenses of a product kept into a cycle cost for that whole cycle."""

    product: str
    quantity: int
    unit_price: Decimal
    period: Cycle

    @property
    def amount(self) -> Decimal:
        return self.unit_price * self.quantity


def recurring_charge(product: str, kept: int, unit_price: Decimal, period: Cycle) -> RecurringCharge | None:
    """The recurring charge for ``kept`` licenses in ``period``; none when no license is kept."""
    return RecurringCharge(product, kept, unit_price, period) if kept > 0 else None


def check_quantity(quantity: int) -> None:
    if not 1 <= quantity <= 10_000:
        raise Rejected("invalid_quantity", f"quantity must be between 1 and 10000, got {quantity}")
