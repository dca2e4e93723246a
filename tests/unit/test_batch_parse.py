"""A batch of usage.calls read in one parse, and every batch that parse must refuse."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from contracts import messages as m
from services.usage_metering.calls_codec import Charged
from services.usage_metering.handlers import registry as metering
from shared.runtime.codec import Record
from shared.runtime.processor import _parse_all
from shared.runtime.registry import HandlerRegistry

BARE = HandlerRegistry()  # no handler: the contract model reads the batch, nothing goes straight
REGISTRIES = pytest.mark.parametrize("registry", [BARE, metering], ids=["model", "metering"])


def call(i: int, cost: str = "1.234567", message_id: uuid.UUID | None = None) -> bytes:
    return (
        m.CallCharged(
            message_id=message_id or uuid.uuid4(),
            account_id=f"acct-{i % 3}",
            occurred_at=datetime(2027, 3, 2, 8, tzinfo=UTC),
            call_id=f"c{i}",
            cost=Decimal(cost),
        )
        .model_dump_json()
        .encode()
    )


def records(values: list[bytes], topic: str = "usage.calls") -> list[Record]:
    return [Record(topic, 0, i, b"k", v) for i, v in enumerate(values)]


def fields(message: Any) -> dict[str, object]:
    """What the calls path reads of a message, whichever decoder made it."""
    names = ("message_id", "type", "account_id", "occurred_at", "schema_version", "causation_id", "call_id")
    return {name: getattr(message, name) for name in names} | {"cost": Decimal(message.cost)}


def test_a_batch_of_calls_reads_the_same_as_one_record_at_a_time() -> None:
    values = [call(i) for i in range(50)]
    parsed, straight = _parse_all(records(values), BARE)
    assert parsed == [m.CallCharged.model_validate_json(v) for v in values]
    assert straight is None  # no handler deduplicates them: the general path claims each in the inbox


def test_metering_reads_a_batch_with_its_own_decoder_and_the_same_values() -> None:
    values = [call(i) for i in range(50)]
    parsed, straight = _parse_all(records(values), metering)
    assert parsed is not None and all(type(c) is Charged for c in parsed)
    assert [fields(c) for c in parsed] == [fields(m.CallCharged.model_validate_json(v)) for v in values]
    assert straight is not None and straight[0] == parsed and straight[2] == 0
    assert list(straight[1].values()) == values


def test_a_batch_outside_the_decoders_subset_is_read_by_the_contract_model() -> None:
    values = [call(1), call(2, cost="10000"), call(3)]  # 10000 USD: valid, but not a plain amount
    parsed, straight = _parse_all(records(values), metering)
    assert parsed == [m.CallCharged.model_validate_json(v) for v in values]
    assert straight is not None and straight[0] == parsed


def test_a_message_twice_in_a_batch_goes_straight_once_with_its_first_copy() -> None:
    again = uuid.uuid4()
    values = [call(1, message_id=again), call(2), call(3, message_id=again)]
    parsed, straight = _parse_all(records(values), metering)
    assert parsed is not None and straight is not None
    messages, received, repeated = straight
    assert [c.call_id for c in messages] == ["c1", "c2"] and repeated == 1
    assert received[again] == values[0]


@REGISTRIES
def test_one_bad_record_sends_the_whole_batch_down_the_careful_path(registry: HandlerRegistry) -> None:
    good = call(99)
    negative = good.replace(b'"cost":"1.234567"', b'"cost":"-1.00"')
    assert negative != good
    for bad in (b"not json", negative, b"", b'{"type": "CallCharged"}'):
        assert _parse_all(records([call(1), bad, call(2)]), registry) == (None, None)


@REGISTRIES
def test_records_that_only_make_sense_joined_are_never_read_as_calls(registry: HandlerRegistry) -> None:
    whole = call(1)
    cut = [whole[:40], whole[40:]]  # one call cut in two records ...
    two_in_one = call(2) + b"," + call(3)  # ... and one record holding two: the count would match
    assert _parse_all(records([*cut, two_in_one]), registry) == (None, None)
    # A string cannot run over the separator either, even when both halves look like objects.
    assert _parse_all(records([b'{"call_id": "x}', b'{"}', two_in_one]), registry) == (None, None)


@REGISTRIES
def test_a_topic_with_several_message_types_is_not_read_this_way(registry: HandlerRegistry) -> None:
    assert _parse_all(records([call(1), call(2)], topic="licensing.commands"), registry) == (None, None)


def test_only_an_event_its_handler_deduplicates_may_have_a_decoder_of_its_own() -> None:
    registry = HandlerRegistry()
    with pytest.raises(ValueError, match="deduplicates"):
        registry.on_batch(m.CallCharged, decoder=lambda data: [])  # the inbox would not see its repeats
    with pytest.raises(ValueError, match="deduplicates"):
        # a command's sender is checked message by message: it never goes straight to a handler
        registry.on_batch(m.SetCallingCreditCap, deduplicates=True, decoder=lambda data: [])
