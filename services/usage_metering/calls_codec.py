"""The hot path's decoder of ``usage.calls``: a batch of ``CallCharged`` read by msgspec into plain
structs (``Charged``), about half the worker's cost of the contract model's decoding, most of
which is building pydantic objects in Python (docs/architecture.md, Decisions).

It takes a subset of what the contract model takes, with the same values, and raises on anything
else: the processor then decodes that batch with the contract model, which decides. So the service
accepts and refuses exactly what the contract does (``tests/unit/test_calls_codec.py`` runs both
over the same valid and invalid inputs). The subset:

- the batch is ASCII (JSON escapes for anything else): msgspec skips a field it does not read
  without checking its UTF-8, the model refuses the record;
- ``cost``: a JSON string holding 0 to 9999 with at most 6 decimals, no sign, exponent, spaces or
  leading zeros (``"10000"`` or ``"1e3"`` go to the model);
- ``account_id``: the model's pattern and lengths, anchored at the very end (``\\Z``: Python's
  ``$`` also matches before a final newline, the model's does not);
- ``occurred_at``: RFC 3339 with an offset as msgspec reads it; a batch holding seven digits after
  a point anywhere goes to the model, which truncates a fraction of seconds that msgspec rounds;
- ``message_id``, ``causation_id``: hyphenated or 32 hex digits, read alike by both (braces or
  ``urn:uuid:`` go to the model); ``type`` ``CallCharged``, ``schema_version`` 1; other fields
  are ignored, as the model ignores them.

What needs the message itself (an alert it causes, a park for an account not open yet) takes the
contract model read from the record's own bytes (``contract_call``).
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec

from contracts import messages as m
from shared.runtime.unit_of_work import UnitOfWork

# Checked after decoding (``decode_calls``) rather than by msgspec's ``Meta(pattern=...)``, which
# costs about twice as much a call; an account id that matched is remembered and not matched again
# (up to _CHECKED_ACCOUNTS_MAX ids, then all are forgotten at once).
_PLAIN_COST = re.compile(r"\A(?:0|[1-9][0-9]{0,3})(?:\.[0-9]{1,6})?\Z")
_ACCOUNT_ID = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
_CHECKED_ACCOUNTS: set[str] = set()  # account ids that matched _ACCOUNT_ID
_CHECKED_ACCOUNTS_MAX = 100_000
CallId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Aware = Annotated[datetime, msgspec.Meta(tz=True)]

# Seven digits after a point: a fraction of seconds msgspec would round (or anything else alike, a
# call id say, which only sends that batch to the model).
_FINER_THAN_MICROSECONDS = re.compile(rb"\.[0-9]{7}")


class Charged(msgspec.Struct, frozen=True, gc=False):
    """A ``CallCharged`` as the calls path reads it: the contract's fields, the cost as its string."""

    message_id: uuid.UUID
    type: Literal["CallCharged"]
    account_id: str  # matches _ACCOUNT_ID (decode_calls)
    occurred_at: Aware
    call_id: CallId
    cost: str  # matches _PLAIN_COST (decode_calls)
    schema_version: Literal[1] = 1
    causation_id: uuid.UUID | None = None

    @property
    def business_date(self) -> date:
        """As ``Envelope.business_date``: the UTC calendar date of ``occurred_at``."""
        at = self.occurred_at
        offset = at.utcoffset()
        return (at - offset).date() if offset else at.date()


_DECODER = msgspec.json.Decoder(list[Charged])


class NotPlain(ValueError):
    """The batch holds something outside the decoder's subset: the contract model decides it."""


def decode_calls(data: bytes) -> list[Charged]:
    """A JSON array of ``CallCharged`` as ``Charged``; ``NotPlain`` for anything outside the subset."""
    if not data.isascii():  # msgspec does not check the UTF-8 of a field it skips, the model does
        raise NotPlain("not ASCII")
    if _FINER_THAN_MICROSECONDS.search(data):
        raise NotPlain("a fraction of seconds finer than microseconds")
    try:
        calls = _DECODER.decode(data)
    except msgspec.DecodeError as exc:  # not JSON, or a field outside the subset (ValidationError)
        raise NotPlain(str(exc)) from None
    plain, checked = _PLAIN_COST.match, _CHECKED_ACCOUNTS
    for call in calls:
        if plain(call.cost) is None:
            raise NotPlain(f"a cost outside the plain form: {call.cost!r}")
        account_id = call.account_id
        if account_id not in checked:
            if _ACCOUNT_ID.match(account_id) is None:
                raise NotPlain(f"an account id outside the contract's pattern: {account_id!r}")
            if len(checked) >= _CHECKED_ACCOUNTS_MAX:
                checked.clear()
            checked.add(account_id)
    return calls


def contract_call(unit: UnitOfWork[Any, Any], call: Charged | m.CallCharged) -> m.CallCharged:
    """The contract model of a call, read from the bytes it arrived as when it came as ``Charged``."""
    if isinstance(call, m.CallCharged):
        return call
    return m.CallCharged.model_validate_json(unit.payload_of(call))
