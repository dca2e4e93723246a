"""The board's rules as pure functions: where an account stands against its cap, from the alerts.

An account's standing is that of its latest known cycle: the highest threshold reached there
(thresholds a raised cap put ahead again drop out, as usage metering re-arms them), whether
calling is blocked, and since when. Alerts and cycle closes come on different topics, so in no
fixed order between them: each carries its cycle, and the standing only moves forward.

- an alert for a later cycle than the standing's starts that cycle afresh, then applies;
- an alert for an earlier cycle changes nothing (it stays in the account's history);
- a cycle closed at or after the standing's cycle starts the next cycle: nothing reached,
  not blocked, nothing accrued yet (usage metering says so too, with ``CallingUnblocked``).

So a close and the next cycle's first alerts end in the same standing in either order
(``tests/unit/test_alert_board_domain.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal

THRESHOLDS = (50, 80, 100)
NEAR_CAP_PERCENT = 80
ZERO = Decimal("0")


@dataclass(frozen=True)
class Alert:
    """One message of ``metering.alerts`` as the board reads it."""

    kind: str  # threshold | blocked | unblocked | cap_changed | cap_change_refused
    account_id: str
    occurred_at: datetime
    cycle_start: date | None
    accrued: Decimal | None = None
    cap: Decimal | None = None
    threshold_percent: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CycleClosed:
    account_id: str
    occurred_at: datetime
    cycle_start: date
    next_cycle_start: date


@dataclass(frozen=True)
class Standing:
    account_id: str
    cycle_start: date
    since: datetime  # when its level (threshold reached, blocked or not) last changed
    updated_at: datetime  # business time of the latest alert or close applied
    cap: Decimal | None = None
    accrued: Decimal | None = None
    threshold_percent: int | None = None
    blocked: bool = False
    blocked_since: datetime | None = None

    @property
    def near_cap(self) -> bool:
        """At or above 80 % of the cap and not blocked."""
        return not self.blocked and (self.threshold_percent or 0) >= NEAR_CAP_PERCENT


def _fresh(account_id: str, cycle_start: date, at: datetime, cap: Decimal | None) -> Standing:
    return Standing(account_id, cycle_start, since=at, updated_at=at, cap=cap, accrued=ZERO)


def _still_reached(highest: int | None, accrued: Decimal | None, cap: Decimal | None) -> int | None:
    """The highest threshold at or below ``highest`` that the accrual still reaches under ``cap``."""
    if highest is None or accrued is None or cap is None:
        return highest
    reached = [p for p in THRESHOLDS if p <= highest and accrued * 100 >= cap * p]
    return max(reached) if reached else None


def apply(standing: Standing | None, alert: Alert) -> Standing | None:
    """The standing after ``alert`` (``standing`` itself when the alert does not move it)."""
    if alert.cycle_start is None or alert.kind == "cap_change_refused":
        return standing
    if standing is None or alert.cycle_start > standing.cycle_start:
        standing = _fresh(alert.account_id, alert.cycle_start, alert.occurred_at, standing.cap if standing else None)
    elif alert.cycle_start < standing.cycle_start:
        return standing
    level = (standing.threshold_percent, standing.blocked)
    new = replace(
        standing,
        updated_at=max(standing.updated_at, alert.occurred_at),
        cap=alert.cap if alert.cap is not None else standing.cap,
        accrued=alert.accrued if alert.accrued is not None else standing.accrued,
    )
    if alert.kind == "threshold":
        new = replace(new, threshold_percent=max(new.threshold_percent or 0, alert.threshold_percent or 0) or None)
    elif alert.kind == "blocked":
        new = replace(new, blocked=True, blocked_since=standing.blocked_since or alert.occurred_at)
    elif alert.kind == "unblocked":
        new = replace(new, blocked=False, blocked_since=None)
        new = replace(new, threshold_percent=_still_reached(new.threshold_percent, new.accrued, new.cap))
    elif alert.kind == "cap_changed":
        new = replace(new, threshold_percent=_still_reached(new.threshold_percent, new.accrued, new.cap))
    if (new.threshold_percent, new.blocked) != level:
        new = replace(new, since=alert.occurred_at)
    return new


def close_cycle(standing: Standing | None, closed: CycleClosed) -> Standing | None:
    """The standing after its cycle closed: the next cycle, nothing reached yet, the same cap."""
    if standing is None or standing.cycle_start > closed.cycle_start:
        return standing  # never alerted (not on the board), or already in a later cycle
    return _fresh(standing.account_id, closed.next_cycle_start, closed.occurred_at, standing.cap)


def describe(alert: Alert) -> str:
    """One line for the feed, e.g. ``80 % of the cap reached: 200.00 of 250.00``."""
    amounts = f"{alert.accrued} of {alert.cap}" if alert.accrued is not None and alert.cap is not None else ""
    if alert.kind == "threshold":
        return f"{alert.threshold_percent} % of the cap reached: {amounts}"
    if alert.kind == "blocked":
        return f"calling blocked at the cap: {amounts}"
    if alert.kind == "unblocked":
        why = {"cap_raised": "the cap was raised", "new_cycle": "a new cycle began"}.get(alert.reason or "", "")
        return f"calling unblocked ({why}): {amounts}"
    if alert.kind == "cap_changed":
        return f"cap changed to {alert.cap} (accrued {alert.accrued})"
    return f"cap change refused: {alert.reason}"
