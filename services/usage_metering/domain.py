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

from shared.rejections import Rejected

DEFAULT_CAP = Decimal("250.00")
THRESHOLDS = (50, 80, 100)
CAP_ROLES = frozenset({"support", "sales"})
ZERO = Decimal("0")


class Meter(NamedTuple):
    """One account's calling credits in one billing cycle. A named tuple, not a frozen dataclass:
    the calls path makes one for every meter a batch touches, at about a third of the cost."""

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


def accrue_many(meter: Meter, costs: Sequence[Decimal]) -> tuple[Meter, list[tuple[int, Alert]]]:
    """``accrue`` for each cost in turn, with each alert paired with the index of the call that
    raised it. The same result as folding ``accrue``, but it only looks at thresholds when the
    accrual reaches the next one: the hot path of a batch of calls is plain additions."""
    cap, billable, over_cap = meter.cap, meter.billable, meter.over_cap
    mark = _next_mark(meter)
    alerts: list[tuple[int, Alert]] = []
    for index, cost in enumerate(costs):
        room = cap - billable
        if cost <= room:
            billable += cost
        elif room > 0:
            billable, over_cap = cap, over_cap + (cost - room)
        else:
            over_cap += cost
        if mark is not None and billable >= mark:
            meter, raised = _new_alerts(meter._replace(billable=billable, over_cap=over_cap))
            alerts.extend((index, alert) for alert in raised)
            mark = _next_mark(meter)
    return Meter(cap, billable, over_cap, meter.alerted, meter.blocked, meter.late_unbilled), alerts


Parts = tuple[Decimal, Decimal]  # a call's billable and over-cap parts


def accrue_calls(meter: Meter, costs: Sequence[Decimal]) -> tuple[Meter, list[Parts], list[tuple[int, Alert]]]:
    """``accrue_many`` that also says how each call was split: its billable and over-cap parts
    (kept with the call in the ledger, so the meter can be rebuilt by adding them up)."""
    cap, billable, over_cap = meter.cap, meter.billable, meter.over_cap
    mark = _next_mark(meter)
    parts: list[Parts] = []
    alerts: list[tuple[int, Alert]] = []
    for index, cost in enumerate(costs):
        room = cap - billable
        if cost <= room:
            billable += cost
            parts.append((cost, ZERO))
        elif room > 0:
            billable, over_cap = cap, over_cap + (cost - room)
            parts.append((room, cost - room))
        else:
            over_cap += cost
            parts.append((ZERO, cost))
        if mark is not None and billable >= mark:
            meter, raised = _new_alerts(meter._replace(billable=billable, over_cap=over_cap))
            alerts.extend((index, alert) for alert in raised)
            mark = _next_mark(meter)
    return Meter(cap, billable, over_cap, meter.alerted, meter.blocked, meter.late_unbilled), parts, alerts


def accrue_late_calls(meter: Meter, costs: Sequence[Decimal]) -> tuple[Meter, list[Parts]]:
    """``accrue_late`` for each cost in turn, with each call's billable and over-cap parts."""
    parts: list[Parts] = []
    for cost in costs:
        billed = min(cost, max(ZERO, meter.cap - meter.billable))
        parts.append((billed, cost - billed))
        meter = accrue_late(meter, cost)
    return meter, parts


def _next_mark(meter: Meter) -> Decimal | None:
    """The accrual at which the next alert (threshold or block) is due, None when none is left."""
    for percent in THRESHOLDS:  # ascending: the first one not alerted yet is the next one
        if percent not in meter.alerted:
            return meter.cap * percent / 100
    return None if meter.blocked else meter.cap


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
