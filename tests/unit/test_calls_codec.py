"""Usage metering's own decoder of usage.calls takes only what the contract model takes, with the
same values; what it does not take, the contract model decides (the processor falls back to it).
So whatever the decoder accepts must be accepted alike by the model, and the usual calls must be
taken by the decoder, or it would be no faster."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from contracts import messages as m
from services.usage_metering.calls_codec import NotPlain, decode_calls
from tests.unit.test_list_decoder import CANDIDATES, VALID, _call, changes, extra_fields

CONTRACT = TypeAdapter(list[m.CallCharged])

# Per field, strings from a wider grammar than the contract's: the edges where two parsers differ.
TEXT_CANDIDATES = {
    "occurred_at": st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt _][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2}(:[0-9]{2})?)?)?\Z"
    ),
    "message_id": st.from_regex(r"\A[{]?(urn:uuid:)?[0-9a-fA-FgG-]{30,38}[}]?\Z"),
    "causation_id": st.from_regex(r"\A[0-9a-fA-F-]{30,38}\Z"),
    "cost": st.from_regex(r"\A[ +-]?[0-9_]{0,6}([.][0-9]{0,8})?([eE][+-]?[0-9]{1,2})?\s?\Z"),
    "account_id": st.text(alphabet=st.sampled_from("aZ09_- \n\t.ä"), min_size=0, max_size=66),
    "call_id": st.text(min_size=0, max_size=130),
}
# Whole records the JSON parsers must agree on: repeated keys, odd values in fields nobody reads.
RAW_RECORDS = [
    b'{"message_id":"6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b","type":"CallCharged","account_id":"a",'
    b'"occurred_at":"2027-03-05T12:00:01Z","call_id":"c","cost":"1.00"' + tail
    for tail in (
        b"}",
        b',"cost":"2.00"}',
        b',"cost":"-2.00"}',
        b',"account_id":"b"}',
        b',"extra":1e999}',
        b',"extra":-0.0e-400}',
        b',"extra":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}',
        b',"extra":"\\ud800"}',
        b',"extra":"\xff"}',
        b',"extra":"\\x41"}',
        b',"extra":NaN}',
        b',"extra":01}',
        b',"call_id":"\\ud83d\\ude00"}',
        b',"call_id":"\\udc00"}',
        b',"type":"CallCharged"}',
        b',"schema_version":1}',
        b',"schema_version":1.0}',
        b',"causation_id":null}',
        b",}",
        b" }",
    )
]


def _verdicts(data: bytes) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """What each decoder makes of ``data``: the fields the calls path reads, or None (refused)."""
    try:
        fast: list[dict[str, Any]] | None = [_fields(c) for c in decode_calls(data)]
    except NotPlain:
        fast = None
    try:
        exact: list[dict[str, Any]] | None = [_fields(c) for c in CONTRACT.validate_json(data)]
    except ValidationError:
        exact = None
    return fast, exact


def _fields(call: Any) -> dict[str, Any]:
    names = ("message_id", "type", "account_id", "call_id", "schema_version", "causation_id", "business_date")
    at = call.occurred_at
    return {name: getattr(call, name) for name in names} | {
        # the same instant, offset and fields: an alert carries the call's occurred_at on
        "occurred_at": (at, at.utcoffset(), at.replace(tzinfo=None)),
        "cost": str(Decimal(call.cost)),  # the same amount written the same way
    }


def _agree(data: bytes) -> bool:
    """Assert the decoder takes only what the model takes, alike; True when it took ``data``."""
    fast, exact = _verdicts(data)
    if fast is not None:
        assert exact is not None, data
        assert fast == exact, data
    return fast is not None


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(changes, extra_fields), min_size=1, max_size=4))
def test_the_decoder_takes_only_what_the_contract_model_takes_with_the_same_values(
    batch: list[tuple[dict, dict]],
) -> None:
    _agree(json.dumps([_call(c) | extra for c, extra in batch]).encode())


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(sorted(TEXT_CANDIDATES)).flatmap(lambda name: st.tuples(st.just(name), TEXT_CANDIDATES[name])))
def test_field_strings_from_a_wider_grammar_are_taken_only_as_the_model_takes_them(choice: tuple[str, str]) -> None:
    name, text = choice
    _agree(json.dumps([VALID | {name: text}]).encode())


def test_each_field_candidate_and_odd_record_is_taken_only_as_the_model_takes_it() -> None:
    taken = refused_by_both = 0
    for name, values in CANDIDATES.items():
        for value in values:
            data = json.dumps([VALID | {name: value}]).encode()
            if _agree(data):
                taken += 1
            elif _verdicts(data)[1] is None:
                refused_by_both += 1
    for record in RAW_RECORDS:
        _agree(b"[" + record + b"]")
    assert taken and refused_by_both  # the candidates hold both kinds


def test_the_usual_calls_are_taken_by_the_decoder() -> None:
    usual = [
        VALID,
        VALID | {"cost": "0"},
        VALID | {"cost": "9999.999999"},
        VALID | {"cost": "0.01", "occurred_at": "2027-03-05T23:59:59.123456-05:00"},
        VALID | {"occurred_at": "2027-03-05T12:00:01Z", "causation_id": "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"},
        VALID | {"extra": {"nested": [1, 2]}},
        {k: v for k, v in VALID.items() if k not in ("schema_version", "causation_id")},
    ]
    for call in usual:
        assert _agree(json.dumps([call]).encode()), call
    assert _agree(json.dumps(usual).encode())


def test_a_batch_with_a_fraction_finer_than_microseconds_goes_to_the_model() -> None:
    # msgspec rounds .9999999 up to the next second; the model truncates it: only the model reads it.
    data = json.dumps([VALID | {"occurred_at": "2027-03-05T12:00:01.9999999+00:00"}]).encode()
    fast, exact = _verdicts(data)
    assert fast is None and exact is not None
    assert exact[0]["occurred_at"][2].second == 1


def test_an_account_id_is_remembered_only_once_it_matched_and_the_memory_stays_bounded(monkeypatch) -> None:
    from services.usage_metering import calls_codec

    monkeypatch.setattr(calls_codec, "_CHECKED_ACCOUNTS", set())
    monkeypatch.setattr(calls_codec, "_CHECKED_ACCOUNTS_MAX", 2)
    for _ in range(2):  # refused, and still refused: a refused id is never remembered
        for odd in ("acc 1", "acc-1\n", "", "ä" * 3, "a" * 65):
            assert not _agree(json.dumps([VALID | {"account_id": "acc-1"}, VALID | {"account_id": odd}]).encode())
    assert calls_codec._CHECKED_ACCOUNTS.issubset({"acc-1"})

    for account_id in ("acc-1", "acc-2", "acc-3", "acc-1"):
        assert _agree(json.dumps([VALID | {"account_id": account_id}]).encode())
        assert account_id in calls_codec._CHECKED_ACCOUNTS and len(calls_codec._CHECKED_ACCOUNTS) <= 2
