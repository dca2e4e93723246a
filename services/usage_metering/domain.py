"""Calling-credit rules as pure functions (no I/O): accrual up to the cap, alerts, blocking, cap changes.

Rules: ``shared/spec/domain.md`` (Calling credits). Decisions added here (``docs/architecture.md``):
- accrual is kept exact (up to 6 decimal places); the invoice rounds half-up to the cent;
- lowering the cap below what is already accrued does not un-bill calls made under the old
  cap: the accrual stays, calling is blocked at once and the crossed thresholds alert;
- a call for a cycle already sealed is "late": it still accrues against that cycle's cap,
  raises no alert and no block (that cycle is over), and is billed on the next invoice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from shared.money import micro_dollars, usd
from shared.rejections import Rejected

DEFAULT_CAP = Decimal("250.00")
THRESHOLDS = (50, 80, 100)
CAP_ROLES = frozenset({"support", "sales"})
ZERO = Decimal("0")


class Meter(NamedTuple):
    """One account's calling credits in one billing cycle, in USD (the calls path folds it in
    micro-dollars: ``Micros``)."""

    cap: Decimal
    billable: Decimal = ZERO
    over_cap: Decimal = ZERO
    alerted: frozenset[int] = frozenset()
    blocked: bool = False
    late_unbilled: Decimal = ZERO


@dataclass(frozen=True)
class Alert:
    kind: str  # "threshold", "blocked", "unblocked"
    billable: Decimal
    cap: Decimal
    threshold_percent: int | None = None
    reason: str | None = None


def _reached(billable: Decimal, cap: Decimal, percent: int) -> bool:
    return billable * 100 >= cap * percent


def _new_alerts(meter: Meter) -> tuple[Meter, list[Alert]]:
    alerts = []
    alerted = set(meter.alerted)
    for percent in THRESHOLDS:
        if percent not in alerted and _reached(meter.billable, meter.cap, percent):
            alerted.add(percent)
            alerts.append(Alert("threshold", meter.billable, meter.cap, threshold_percent=percent))
    blocked = meter.blocked
    if not blocked and meter.billable >= meter.cap:
        blocked = True
        alerts.append(Alert("blocked", meter.billable, meter.cap))
    return meter._replace(alerted=frozenset(alerted), blocked=blocked), alerts


def accrue(meter: Meter, cost: Decimal) -> tuple[Meter, list[Alert]]:
    """Add one call: the part beyond the cap is over-cap and not billed; alerts fire once each."""
    room = max(ZERO, meter.cap - meter.billable)
    billed = min(cost, room)
    meter = meter._replace(billable=meter.billable + billed, over_cap=meter.over_cap + (cost - billed))
    return _new_alerts(meter)


class Micros(NamedTuple):
    """A meter as the calls path folds it: its amounts in integer micro-dollars (the ledger's unit),
    so a batch of calls is integer additions; ``limit`` is the cap in micro-dollars, ``cap`` the cap
    as set (alerts carry it). ``in_micros`` and ``in_usd`` convert exactly, both ways."""

    cap: Decimal
    limit: int
    billable: int
    over_cap: int
    alerted: frozenset[int]
    blocked: bool
    late_unbilled: int


def in_micros(meter: Meter) -> Micros:
    return Micros(
        meter.cap,
        micro_dollars(meter.cap),
        micro_dollars(meter.billable),
        micro_dollars(meter.over_cap),
        meter.alerted,
        meter.blocked,
        micro_dollars(meter.late_unbilled),
    )


def in_usd(meter: Micros) -> Meter:
    return Meter(
        meter.cap, usd(meter.billable), usd(meter.over_cap), meter.alerted, meter.blocked, usd(meter.late_unbilled)
    )


MicroParts = tuple[int, int]  # a call's billable and over-cap parts, in micro-dollars


def accrue_calls(meter: Micros, costs: Sequence[int]) -> tuple[Micros, list[MicroParts], list[tuple[int, Alert]]]:
    """``accrue`` for each cost in turn, in micro-dollars: the folded meter, how each call was split
    (its billable and over-cap parts, kept with the call in the ledger, so the meter can be rebuilt
    by adding them up), and each alert with the index of the call that raised it. Thresholds are
    looked at only when the accrual reaches the next one, and decided by ``_new_alerts`` on the
    meter in USD: the rest is integer additions."""
    limit, billable, over_cap = meter.limit, meter.billable, meter.over_cap
    mark = _next_mark(meter)
    parts: list[MicroParts] = []
    alerts: list[tuple[int, Alert]] = []
    for index, cost in enumerate(costs):
        room = limit - billable
        if cost <= room:
            billable += cost
            parts.append((cost, 0))
        elif room > 0:
            billable, over_cap = limit, over_cap + (cost - room)
            parts.append((room, cost - room))
        else:
            over_cap += cost
            parts.append((0, cost))
        if mark is not None and billable >= mark:
            decided, raised = _new_alerts(in_usd(meter._replace(billable=billable, over_cap=over_cap)))
            meter = meter._replace(alerted=decided.alerted, blocked=decided.blocked)
            alerts.extend((index, alert) for alert in raised)
            mark = _next_mark(meter)
    return (
        Micros(meter.cap, limit, billable, over_cap, meter.alerted, meter.blocked, meter.late_unbilled),
        parts,
        alerts,
    )


def accrue_late_calls(meter: Micros, costs: Sequence[int]) -> tuple[Micros, list[MicroParts]]:
    """``accrue_late`` for each cost in turn, in micro-dollars, with each call's billable and over-cap parts."""
    limit, billable, over_cap, late = meter.limit, meter.billable, meter.over_cap, meter.late_unbilled
    parts: list[MicroParts] = []
    for cost in costs:
        billed = min(cost, max(0, limit - billable))
        parts.append((billed, cost - billed))
        billable, over_cap, late = billable + billed, over_cap + (cost - billed), late + billed
    return meter._replace(billable=billable, over_cap=over_cap, late_unbilled=late), parts


def _next_mark(meter: Micros) -> int | None:
    """The least accrual, in micro-dollars, at which the next alert (threshold or block) is due
    (``_reached``, rounded up to a whole micro-dollar); None when none is left."""
    for percent in THRESHOLDS:  # ascending: the first one not alerted yet is the next one
        if percent not in meter.alerted:
            return -(-meter.limit * percent // 100)
    return None if meter.blocked else meter.limit


def accrue_late(meter: Meter, cost: Decimal) -> Meter:
    """A call for a sealed cycle: still within that cycle's cap, billed on the next invoice."""
    billed = min(cost, max(ZERO, meter.cap - meter.billable))
    return meter._replace(
        billable=meter.billable + billed,
        over_cap=meter.over_cap + (cost - billed),
        late_unbilled=meter.late_unbilled + billed,
    )


def authorize_cap_change(role: str) -> None:
    if role not in CAP_ROLES:
        raise Rejected("not_authorized", f"only support or sales may change the calling-credit cap, not {role}")


def change_cap(meter: Meter, new_cap: Decimal) -> tuple[Meter, list[Alert]]:
    """Apply a new cap to the current cycle at once; thresholds that lie ahead again re-arm."""
    if new_cap < 0:
        raise Rejected("invalid_cap", f"a cap cannot be negative, got {new_cap}")
    rearmed = frozenset(p for p in meter.alerted if _reached(meter.billable, new_cap, p))
    changed = meter._replace(cap=new_cap, alerted=rearmed)
    alerts: list[Alert] = []
    if meter.blocked and meter.billable < new_cap:
        changed = changed._replace(blocked=False)
        alerts.append(Alert("unblocked", meter.billable, new_cap, reason="cap_raised"))
    changed, crossed = _new_alerts(changed)
    return changed, alerts + crossed


def start_cycle(previous: Meter | None, current: Meter) -> tuple[Meter, list[Alert]]:
    """A new cycle begins: calling is unblocked unless the new cycle is itself already at its cap
    (a zero cap, or calls dated in it that arrived before the close): then it stays blocked."""
    was_blocked = previous is not None and previous.blocked
    if current.billable >= current.cap:
        current, alerts = _new_alerts(current)
        return current, [a for a in alerts if not (was_blocked and a.kind == "blocked")]
    if was_blocked:
        return current, [Alert("unblocked", current.billable, current.cap, reason="new_cycle")]
    return current, []
