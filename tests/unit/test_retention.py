"""Which inbox weeks the retention drops (pure: no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from shared.runtime.retention import CLAIM_OVERLAP, expired_weeks, monday, partition_name

THIRTY_DAYS = timedelta(days=30)


def test_a_week_is_named_and_keyed_by_its_monday() -> None:
    assert monday(date(2026, 12, 1)) == date(2026, 11, 30)  # a Tuesday
    assert monday(date(2026, 11, 30)) == date(2026, 11, 30)
    assert partition_name(date(2026, 11, 30)) == "inbox_20261130"


def test_a_week_goes_only_once_its_newest_claim_is_older_than_the_retention() -> None:
    week = date(2026, 10, 5)
    newest_claim = datetime(2026, 10, 12, tzinfo=UTC) + CLAIM_OVERLAP  # the next week's first hour claims here too
    assert expired_weeks([week], newest_claim + THIRTY_DAYS - timedelta(seconds=1), THIRTY_DAYS) == []
    assert expired_weeks([week], newest_claim + THIRTY_DAYS, THIRTY_DAYS) == [week]


def test_every_id_is_kept_at_least_the_retention_after_its_claim() -> None:
    now = datetime(2026, 12, 1, 9, tzinfo=UTC)
    weeks = [monday(now.date()) - timedelta(weeks=n) for n in range(12)]
    kept = set(weeks) - set(expired_weeks(weeks, now, THIRTY_DAYS))
    for week in weeks:
        latest_claim = datetime.combine(week + timedelta(days=7), datetime.min.time(), UTC) + CLAIM_OVERLAP
        if now - latest_claim < THIRTY_DAYS:
            assert week in kept
    assert len(kept) <= 6  # about the retention, in weeks: the inbox stays bounded
