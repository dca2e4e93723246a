"""A batch of usage.calls read in one parse, and every batch that parse must refuse."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from contracts import messages as m
from shared.runtime.codec import Record
from shared.runtime.processor import _parse_all


def call(i: int) -> bytes:
    return (
        m.CallCharged(
            message_id=uuid.uuid4(),
            account_id=f"acct-{i % 3}",
            occurred_at=datetime(2027, 3, 2, 8, tzinfo=UTC),
            call_id=f"c{i}",
            cost=Decimal("1.234567"),
        )
        .model_dump_json()
        .encode()
    )


def records(values: list[bytes], topic: str = "usage.calls") -> list[Record]:
    return [Record(topic, 0, i, b"k", v) for i, v in enumerate(values)]


def test_a_batch_of_calls_reads_the_same_as_one_record_at_a_time() -> None:
    values = [call(i) for i in range(50)]
    parsed = _parse_all(records(values))
    assert parsed == [m.CallCharged.model_validate_json(v) for v in values]


def test_one_bad_record_sends_the_whole_batch_down_the_careful_path() -> None:
    good = call(99)
    negative = good.replace(b'"cost":"1.234567"', b'"cost":"-1.00"')
    assert negative != good
    for bad in (b"not json", negative, b"", b'{"type": "CallCharged"}'):
        assert _parse_all(records([call(1), bad, call(2)])) is None


def test_records_that_only_make_sense_joined_are_never_read_as_calls() -> None:
    whole = call(1)
    cut = [whole[:40], whole[40:]]  # one call cut in two records ...
    two_in_one = call(2) + b"," + call(3)  # ... and one record holding two: the count would match
    assert _parse_all(records([*cut, two_in_one])) is None
    # A string cannot run over the separator either, even when both halves look like objects.
    assert _parse_all(records([b'{"call_id": "x}', b'{"}', two_in_one])) is None


def test_a_topic_with_several_message_types_is_not_read_this_way() -> None:
    assert _parse_all(records([call(1), call(2)], topic="licensing.commands")) is None
