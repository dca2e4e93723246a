"""Parking: events for an account this service has not opened yet wait in ``parked`` and are
handed back, in arrival order, when its ``AccountOpened`` is handled."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import Envelope
from contracts.topics import BY_NAME

PARK = "insert into parked (account_id, topic, payload) values (:account_id, :topic, :payload)"
RELEASE = "delete from parked where account_id = :account_id returning id, topic, payload"


async def park(session: AsyncSession, topic: str, message: Envelope) -> None:
    await session.execute(
        sa.text(PARK),
        {"account_id": message.account_id, "topic": topic, "payload": message.model_dump_json().encode()},
    )


async def release(session: AsyncSession, account_id: str) -> list[Envelope]:
    """Take the account's parked events out, oldest first, as the messages they were."""
    rows = (await session.execute(sa.text(RELEASE), {"account_id": account_id})).all()
    released = []
    for row in sorted(rows, key=lambda row: row.id):
        envelope = Envelope.model_validate_json(row.payload)
        model = BY_NAME[row.topic].model_for(envelope.type)
        if model is not None:
            released.append(model.model_validate_json(row.payload))
    return released
