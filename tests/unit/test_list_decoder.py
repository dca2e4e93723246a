"""The hot path's decoder of usage.calls accepts and refuses exactly what the contract model does."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError, model_validator

from contracts import messages as m
from shared.runtime.codec import list_decoder

CONTRACT = TypeAdapter(list[m.CallCharged])
FAST = list_decoder(m.CallCharged)

VALID: dict[str, Any] = {
    "message_id": "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
    "type": "CallCharged",
    "account_id": "acct-0001",
    "occurred_at": "2027-03-05T12:00:01+00:00",
    "schema_version": 1,
    "causation_id": None,
    "call_id": "call-00000001",
    "cost": "0.123456",
}
# Per field, values the contract accepts and values it refuses, the edge cases of each type.
CANDIDATES: dict[str, list[Any]] = {
    "message_id": [
        "6F1C2A8E-3B4D-4E5F-8A9B-0C1D2E3F4A5B",
        "6f1c2a8e3b4d4e5f8a9b0c1d2e3f4a5b",
        "{6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b}",
        "urn:uuid:6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        "6f1c2a8e-3b4d-4e5f-8a9b",
        "",
        5,
        None,
    ],
    "type": ["CallCharged", "callcharged", "AccountOpened", "", 1, None],
    "account_id": ["a", "A_b-9", "x" * 64, "x" * 65, "", "a b", "ä", 7, None],
    "occurred_at": [
        "2027-03-05T12:00:01Z",
        "2027-03-05T23:59:59.123456-05:00",
        "2027-03-05T12:00:01.1234567+00:00",
        "2027-03-05 12:00:01+01:00",
        "2027-03-05T12:00:01",
        "2027-03-05",
        "2027-02-30T00:00:00+00:00",
        1_700_000_000,
        "",
        None,
    ],
    "schema_version": [1, 2, "1", 1.0, True, None],
    "causation_id": [None, "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "nope", 3],
    "call_id": ["c", "c" * 128, "c" * 129, "", " ", 12, None],
    "cost": [
        "0",
        "0.000001",
        "10000",
        "10000.000000",
        "10000.000001",
        "9999.9999995",
        "-0",
        "-0.01",
        "+1.5",
        " 1.5 ",
        "1_000",
        "1e-3",
        "1E2",
        "NaN",
        "Infinity",
        "0.0000010",
        "abc",
        "",
        1.5,
        1,
        None,
    ],
}
MISSING = object()


def _decoded(decode: Any, data: bytes) -> list[str] | str:
    """What a decoder makes of ``data``: each model's fields and JSON, or "refused"."""
    try:
        return [repr(sorted(c.__dict__.items())) + c.model_dump_json() for c in decode(data)]
    except ValidationError:
        return "refused"


def _call(changes: dict[str, Any]) -> dict[str, Any]:
    call = dict(VALID)
    for name, value in changes.items():
        if value is MISSING:
            call.pop(name, None)
        else:
            call[name] = value
    return call


changes = st.dictionaries(
    st.sampled_from(sorted(CANDIDATES)),
    st.none(),  # replaced below by a candidate of that field
    max_size=3,
).flatmap(
    lambda chosen: st.fixed_dictionaries({name: st.sampled_from([*CANDIDATES[name], MISSING]) for name in chosen})
)
extra_fields = st.dictionaries(st.sampled_from(["extra", "note", "cost_micros"]), st.integers(), max_size=2)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(changes, extra_fields), min_size=1, max_size=4))
def test_the_decoder_accepts_and_refuses_what_the_contract_model_does(batch: list[tuple[dict, dict]]) -> None:
    data = json.dumps([_call(c) | extra for c, extra in batch]).encode()
    assert _decoded(FAST, data) == _decoded(CONTRACT.validate_json, data)


def test_each_field_candidate_alone_is_judged_as_the_contract_model_judges_it() -> None:
    judged = set()
    for name, values in CANDIDATES.items():
        for value in [*values, MISSING]:
            data = json.dumps([_call({name: value})]).encode()
            verdict = _decoded(FAST, data)
            assert verdict == _decoded(CONTRACT.validate_json, data), (name, value)
            judged.add(verdict == "refused")
    assert judged == {True, False}  # the candidates hold both kinds


def test_decoded_calls_are_contract_models_with_exact_money() -> None:
    call = FAST(json.dumps([VALID | {"cost": "2.500001"}]).encode())[0]
    assert type(call) is m.CallCharged
    assert str(call.cost) == "2.500001"
    assert call == m.CallCharged.model_validate_json(json.dumps(VALID | {"cost": "2.500001"}))
    assert call.model_dump_json() == m.CallCharged.model_validate_json(call.model_dump_json()).model_dump_json()


def test_a_model_the_decoder_cannot_reproduce_gets_pydantics_own_adapter() -> None:
    class Checked(BaseModel):
        low: int
        high: int

        @model_validator(mode="after")
        def ordered(self) -> Checked:
            if self.low > self.high:
                raise ValueError("low above high")
            return self

    decode = list_decoder(Checked)
    assert decode(b'[{"low": 1, "high": 2}]') == [Checked(low=1, high=2)]
    assert _decoded(decode, b'[{"low": 3, "high": 2}]') == "refused"
