"""The envelope every message carries, and the field types the contract is written in.

Decisions a client may rely on (kept stable):
- unknown extra fields are ignored (forward compatibility); wrong types are refused;
- money is a JSON string holding a decimal number (``"15.00"``); a JSON number is refused;
- ``occurred_at`` must carry a UTC offset; business time is always taken from it;
- the Kafka record key is the ``account_id``.
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

AccountId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def _decimal_from_string(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str):
        raise ValueError('money must be a JSON string holding a decimal number, e.g. "15.00"')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return amount


Money = Annotated[
    Decimal,
    BeforeValidator(_decimal_from_string),
    PlainSerializer(lambda amount: str(amount), return_type=str, when_used="always"),
]
"""A USD amount: ``Decimal`` in Python, a decimal string in JSON."""

Day = Annotated[date, PlainSerializer(lambda day: day.isoformat(), return_type=str)]


class ContractModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, strict=True)


class Actor(ContractModel):
    id: str = Field(min_length=1, max_length=128)
    role: str = Field(min_length=1, max_length=32, description="office_admin, support, sales, service or operator")


class Envelope(ContractModel):
    """What every message has; enough to route, deduplicate and order it."""

    message_id: uuid.UUID
    type: str = Field(min_length=1, max_length=64)
    account_id: AccountId
    occurred_at: AwareDatetime
    schema_version: Literal[1] = 1

    @property
    def business_date(self) -> date:
        """The UTC calendar date the message happened on (cycles are UTC dates)."""
        at = self.occurred_at
        offset = at.utcoffset()  # aware, so never None; half the cost of astimezone(UTC)
        return (at - offset).date() if offset else at.date()


class Command(Envelope):
    actor: Actor


class Event(Envelope):
    causation_id: uuid.UUID | None = None

    @classmethod
    def caused_by(cls, cause: Envelope, part: str = "", **fields: Any) -> Self:
        """The event ``cause`` leads to: same account and business time, a message id derived from
        the cause (so a re-run yields the same id), and ``causation_id`` = the cause's id."""
        type_name = cls.model_fields["type"].default
        return cls(
            message_id=uuid.uuid5(cause.message_id, f"{type_name}:{part}"),
            account_id=cause.account_id,
            occurred_at=cause.occurred_at,
            causation_id=cause.message_id,
            **fields,
        )
