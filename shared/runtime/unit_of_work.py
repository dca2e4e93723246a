"""The unit of work: one transaction's session, the service's store on it, the settings, and the
events to publish when it commits (written to the outbox in the same transaction)."""

from __future__ import annotations

import uuid
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import Command, Envelope, Event
from shared.db import driver_connection
from shared.runtime import parking
from shared.runtime.tables import OUTBOX_CHANNEL

WRITE_OUTBOX = (
    "with written as (insert into outbox (message_id, topic, key, payload) "
    "select * from unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])) "
    f"select pg_notify('{OUTBOX_CHANNEL}', '')"
)
LOCK_ACCOUNT = "select pg_advisory_xact_lock(hashtext(:account_id))"

StoreFactory = Callable[[AsyncSession], Any]

S = TypeVar("S", covariant=True)
T = TypeVar("T", covariant=True)


class Received(Protocol):
    """A message as a service's own decoder read it (not a contract model), e.g. usage metering's
    ``Charged``: its bytes are in the unit (``payload_of``)."""

    @property
    def message_id(self) -> uuid.UUID: ...


class UnitOfWork(Protocol[S, T]):
    """What a handler gets: the service's store and settings, and the transaction's runtime
    (events to publish when it commits, parking, per-account locks). The processor's ``Unit``
    is the real one; tests hand handlers an in-memory one."""

    @property
    def store(self) -> S: ...

    @property
    def settings(self) -> T: ...

    def emit(self, topic: str, event: Event | Command) -> None: ...

    def resend(self, topic: str, payload: bytes) -> None: ...

    def payload_of(self, message: Envelope | Received) -> bytes: ...

    async def lock_account(self, account_id: str) -> None: ...

    async def park(self, topic: str, message: Envelope) -> None: ...

    async def release_parked(self, account_id: str) -> list[Envelope]: ...

    def count(self, counter: Any, amount: Any = 1) -> None: ...


@dataclass
class Unit:
    """One transaction's worth of work: the session, the service's store on it, the settings, and
    the events to publish when it commits."""

    session: AsyncSession
    store: Any = None
    settings: Any = None
    outbox: list[tuple[uuid.UUID, str, str, bytes]] = field(default_factory=list)
    received: dict[uuid.UUID, bytes | None] = field(default_factory=dict)
    # Claimed in the inbox, then dead-lettered: no effect, so not kept as processed (a corrected
    # copy with the same id, e.g. one re-driven with ``billing dlq replay``, is processed).
    unclaimed: list[uuid.UUID] = field(default_factory=list)
    # Records not handled, by (topic, outcome), and metrics to count once the transaction committed.
    outcomes: Tally[tuple[str, str]] = field(default_factory=Tally)
    counted: list[tuple[Any, Any]] = field(default_factory=list)
    _driver: Any = None

    def count(self, counter: Any, amount: Any = 1) -> None:
        """Add ``amount`` to a metric (a bound counter) if and when this unit's transaction commits."""
        self.counted.append((counter, amount))

    async def db(self) -> Any:
        """The asyncpg connection in this unit's transaction, for the hot statements."""
        if self._driver is None:
            self._driver = await driver_connection(self.session)
        return self._driver

    def payload_of(self, message: Envelope | Received) -> bytes:
        """The JSON a batch handler's message arrived as (no second dump to keep it as received)."""
        raw = self.received.get(message.message_id)
        if raw is not None:
            return raw
        if isinstance(message, Envelope):
            return message.model_dump_json().encode()
        raise KeyError(f"message {message.message_id} is not one this unit received")

    def emit(self, topic: str, event: Event | Command) -> None:
        self.outbox.append((event.message_id, topic, event.account_id, event.model_dump_json().encode()))

    def resend(self, topic: str, payload: bytes) -> None:
        """An event sent before, sent again byte for byte (a repeated request answered the same)."""
        sent = Envelope.model_validate_json(payload)
        self.outbox.append((sent.message_id, topic, sent.account_id, payload))

    async def lock_account(self, account_id: str) -> None:
        """Serialise with other transactions about this account (parking vs. opening it)."""
        await self.session.execute(sa.text(LOCK_ACCOUNT), {"account_id": account_id})

    async def park(self, topic: str, message: Envelope) -> None:
        """Keep an event for an account not opened yet; ``release_parked`` hands it back later."""
        await parking.park(self.session, topic, message)

    async def release_parked(self, account_id: str) -> list[Envelope]:
        return await parking.release(self.session, account_id)

    async def flush(self) -> None:
        if not self.outbox:
            return
        ids, topics, keys, payloads = zip(*self.outbox, strict=True)
        # The notification is delivered at commit, to the relay leader of this service (whichever
        # replica it runs in): rows wait for no poll. Same statement, so no extra round trip.
        await (await self.db()).execute(WRITE_OUTBOX, list(ids), list(topics), list(keys), list(payloads))
