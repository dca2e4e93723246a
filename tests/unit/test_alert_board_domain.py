"""The alert board's standing rules: what the page lists as blocked or near the cap, and since when."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from services.alert_board import domain
from services.alert_board.domain import Alert, CycleClosed

ACCOUNT = "acme"
NOV, DEC = date(2026, 11, 1), date(2026, 12, 1)


def at(day: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, 12, tzinfo=UTC)


def threshold(percent: int, accrued: str, when: datetime, cycle: date = NOV, cap: str = "250.00") -> Alert:
    return Alert("threshold", ACCOUNT, when, cycle, Decimal(accrued), Decimal(cap), threshold_percent=percent)


def blocked(when: datetime, cycle: date = NOV) -> Alert:
    return Alert("blocked", ACCOUNT, when, cycle, Decimal("250.00"), Decimal("250.00"))


def fold(*alerts: Alert, standing: domain.Standing | None = None) -> domain.Standing | None:
    for alert in alerts:
        standing = domain.apply(standing, alert)
    return standing


def test_reaching_80_percent_puts_the_account_near_its_cap_since_that_alert() -> None:
    standing = fold(threshold(50, "125.00", at(5)), threshold(80, "200.00", at(9)))

    assert standing is not None and standing.near_cap and not standing.blocked
    assert standing.threshold_percent == 80 and standing.accrued == Decimal("200.00")
    assert standing.since == at(9)


def test_fifty_percent_alone_is_not_near_the_cap() -> None:
    standing = fold(threshold(50, "125.00", at(5)))

    assert standing is not None and not standing.near_cap


def test_a_block_is_listed_as_blocked_since_the_block_not_near_the_cap() -> None:
    standing = fold(threshold(80, "200.00", at(9)), threshold(100, "250.00", at(12)), blocked(at(12)))

    assert standing is not None and standing.blocked and not standing.near_cap
    assert standing.blocked_since == at(12)


def test_raising_the_cap_unblocks_and_drops_the_thresholds_that_lie_ahead_again() -> None:
    raised = Alert("cap_changed", ACCOUNT, at(13), NOV, Decimal("250.00"), Decimal("400.00"))
    unblocked = Alert("unblocked", ACCOUNT, at(13), NOV, Decimal("250.00"), Decimal("400.00"), reason="cap_raised")

    standing = fold(threshold(100, "250.00", at(12)), blocked(at(12)), raised, unblocked)

    assert standing is not None and not standing.blocked and standing.blocked_since is None
    assert standing.threshold_percent == 50  # 250 of 400 is past 50 %, not 80 %
    assert standing.cap == Decimal("400.00") and standing.since == at(13)


def test_an_alert_of_an_earlier_cycle_changes_nothing() -> None:
    now = fold(threshold(50, "125.00", at(3, 12), cycle=DEC))

    assert fold(blocked(at(30)), standing=now) == now


def test_an_alert_of_a_later_cycle_starts_that_cycle_afresh() -> None:
    standing = fold(blocked(at(20)), threshold(50, "125.00", at(3, 12), cycle=DEC))

    assert standing is not None and standing.cycle_start == DEC
    assert not standing.blocked and standing.threshold_percent == 50


def test_a_closed_cycle_clears_the_board_for_the_next_one_in_either_order_with_its_first_alert() -> None:
    before = fold(threshold(100, "250.00", at(12)), blocked(at(12)))
    close = CycleClosed(ACCOUNT, datetime(2026, 12, 1, tzinfo=UTC), NOV, DEC)
    first_of_december = threshold(50, "125.00", at(3, 12), cycle=DEC)

    close_first = domain.apply(domain.close_cycle(before, close), first_of_december)
    alert_first = domain.close_cycle(domain.apply(before, first_of_december), close)

    assert close_first == alert_first
    assert close_first is not None and close_first.cycle_start == DEC and not close_first.blocked
    cleared = domain.close_cycle(before, close)
    assert cleared is not None and cleared.threshold_percent is None and cleared.accrued == 0


def test_an_account_that_never_alerted_stays_off_the_board_when_its_cycle_closes() -> None:
    assert domain.close_cycle(None, CycleClosed(ACCOUNT, at(30), NOV, DEC)) is None


def test_a_refused_cap_change_is_in_the_history_but_moves_nothing() -> None:
    now = fold(threshold(80, "200.00", at(9)))
    refused = Alert("cap_change_refused", ACCOUNT, at(10), None, reason="not_authorized")

    assert domain.apply(now, refused) == now
    assert domain.describe(refused) == "cap change refused: not_authorized"
