"""The seal protocol license orders and usage metering both follow when cycle close asks them to
seal a cycle (``BillingCycleClosing``), and the ``seals`` table that makes a repeat harmless.

For each round of requests (an account at most once a round, so catch-ups go in order):
find the accounts (locked); an account not opened yet may be opening in another transaction,
so wait for its lock and look again; a request for an account still unknown is parked until its
``AccountOpened``; a cycle sealed before is answered with the very event sent then; a request
for any cycle but the account's open one is an error; the rest are the service's to seal. Each
seal it sends is stored with the event, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import Event
from contracts.messages import BillingCycleClosing
from contracts.topics import BILLING_CYCLES
from shared.cycles import Cycle
from shared.runtime.registry import one_per_account
from shared.runtime.unit_of_work import UnitOfWork

SealKey = tuple[str, date]  # (account id, cycle start)


def declare_seals_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "seals",
        metadata,
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("cycle_start", sa.Date, primary_key=True),
        sa.Column("event", sa.LargeBinary, nullable=False, comment="the seal event sent, sent again on a repeat"),
    )


STORED_SEALS = (
    "select seals.account_id, seals.cycle_start, seals.event from seals "
    "join unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[])) as asked(account_id, cycle_start) "
    "on seals.account_id = asked.account_id and seals.cycle_start = asked.cycle_start"
)
RECORD_SEALS = (
    "insert into seals (account_id, cycle_start, event) "
    "select * from unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[]), cast(:events as bytea[]))"
)


class SealLedger:
    """The seals a service has sent, by (account, cycle start), in its ``seals`` table."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def sent(self, keys: Sequence[SealKey]) -> dict[SealKey, bytes]:
        """The events sent before for any of these cycles."""
        rows = await self.session.execute(
            sa.text(STORED_SEALS),
            {"account_ids": [account for account, _ in keys], "cycle_starts": [start for _, start in keys]},
        )
        return {(row.account_id, row.cycle_start): row.event for row in rows}

    async def record(self, seals: Sequence[tuple[SealKey, bytes]]) -> None:
        if seals:
            await self.session.execute(
                sa.text(RECORD_SEALS),
                {
                    "account_ids": [account for (account, _), _ in seals],
                    "cycle_starts": [start for (_, start), _ in seals],
                    "events": [event for _, event in seals],
                },
            )


class Ledger(Protocol):
    async def sent(self, keys: Sequence[SealKey]) -> dict[SealKey, bytes]: ...

    async def record(self, seals: Sequence[tuple[SealKey, bytes]]) -> None: ...


class SealableAccount(Protocol):
    @property
    def account_id(self) -> str: ...

    @property
    def open_cycle(self) -> Cycle: ...


A = TypeVar("A", bound=SealableAccount)


@dataclass
class Seals(Generic[A]):
    """One round's requests to seal, with their accounts; ``send`` emits a seal and keeps it for
    the ledger (in the order the service sends them, between its other events)."""

    unit: UnitOfWork[Any, Any]
    topic: str
    todo: list[tuple[BillingCycleClosing, A]]
    sent: list[tuple[SealKey, bytes]] = field(default_factory=list)

    def send(self, sealed: Event, cycle_start: date) -> None:
        self.unit.emit(self.topic, sealed)
        self.sent.append(((sealed.account_id, cycle_start), sealed.model_dump_json().encode()))


async def seal_cycles(
    unit: UnitOfWork[Any, Any],
    requests: Sequence[BillingCycleClosing],
    *,
    answers_to: str,
    ledger: Ledger,
    find_accounts: Callable[[list[str]], Awaitable[dict[str, A]]],
    seal: Callable[[Any, Seals[A]], Awaitable[Any]],
) -> None:
    """Run the protocol for a batch of requests, round by round; ``seal`` seals a round's open
    cycles and ``send``s one seal event for each (``find_accounts`` locks the accounts it finds)."""
    for round_ in one_per_account(requests):
        todo = await _requests_to_seal(unit, round_, answers_to, ledger, find_accounts)
        if todo:
            seals = Seals(unit, answers_to, todo)
            await seal(unit, seals)
            await ledger.record(seals.sent)


async def _requests_to_seal(
    unit: UnitOfWork[Any, Any],
    requests: list[BillingCycleClosing],
    answers_to: str,
    ledger: Ledger,
    find_accounts: Callable[[list[str]], Awaitable[dict[str, A]]],
) -> list[tuple[BillingCycleClosing, A]]:
    ids = sorted(request.account_id for request in requests)
    accounts = await find_accounts(ids)
    for account_id in [a for a in ids if a not in accounts]:
        await unit.lock_account(account_id)  # opening right now? wait for it, then look again
        accounts |= await find_accounts([account_id])
    already = await ledger.sent([(request.account_id, request.cycle_start) for request in requests])
    todo: list[tuple[BillingCycleClosing, A]] = []
    for request in requests:
        account = accounts.get(request.account_id)
        sent_before = already.get((request.account_id, request.cycle_start))
        if account is None:
            await unit.park(BILLING_CYCLES.name, request)  # until its AccountOpened arrives
        elif sent_before is not None:  # asked again: answer the same
            unit.resend(answers_to, sent_before)
        elif Cycle(request.cycle_start, request.cycle_end) != account.open_cycle:
            raise ValueError(f"asked to seal {request.cycle_start} of {request.account_id}; open: {account.open_cycle}")
        else:
            todo.append((request, account))
    return todo
