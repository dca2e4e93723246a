"""License orders' own tables and the queries its handlers need (no business rules here)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.license_orders.domain import Balance, PurchaseQuote
from shared.cycles import Cycle
from shared.db import driver_connection, execute, fetchrow
from shared.runtime.seals import SealLedger, declare_seals_table
from shared.runtime.tables import declare_runtime_tables

metadata = sa.MetaData()
declare_runtime_tables(metadata)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("billing_day", sa.SmallInteger, nullable=False),
    sa.Column("open_cycle_start", sa.Date, nullable=False),
    sa.Column("open_cycle_end", sa.Date, nullable=False),
)
balances = sa.Table(
    "balances",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("product", sa.Text, primary_key=True),
    sa.Column("purchased", sa.Integer, nullable=False),
    sa.Column("assigned", sa.Integer, nullable=False),
    sa.Column("scheduled_for_removal", sa.Integer, nullable=False),
    sa.CheckConstraint("0 <= assigned and assigned <= purchased - scheduled_for_removal", name="seats_invariant"),
)
assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("product", sa.Text, primary_key=True),
    sa.Column("assignee_id", sa.Text, primary_key=True),
)
purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("purchase_id", sa.Uuid, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("product", sa.Text, nullable=False),
    sa.Column("purchase_day", sa.Date, nullable=False),
    sa.Column("quantity_restored", sa.Integer, nullable=False),
    sa.Column("quantity_added", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
    sa.Column("command_id", sa.Uuid, nullable=False),
    sa.Index("purchases_by_account_day", "account_id", "purchase_day"),
)
proration_charges = sa.Table(
    "proration_charges",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("purchase_id", sa.Uuid, nullable=False),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("product", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
    sa.Column("amount", sa.Numeric(14, 2), nullable=False),
    sa.Column("period_start", sa.Date, nullable=False),
    sa.Column("period_end", sa.Date, nullable=False),
    sa.Column("late", sa.Boolean, nullable=False),
    sa.Column("sealed_in", sa.Date, nullable=True, comment="start of the cycle whose invoice carries it"),
    sa.Index("proration_charges_unsealed", "account_id", postgresql_where=sa.text("sealed_in is null")),
)
removals = sa.Table(
    "removals",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("product", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("effective_on", sa.Date, nullable=False),
    sa.Column("applied", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("removals_pending", "account_id", postgresql_where=sa.text("not applied")),
)
prices = sa.Table(
    "prices",
    metadata,
    sa.Column("product", sa.Text, primary_key=True),
    sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
)
account_prices = sa.Table(
    "account_prices",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("product", sa.Text, primary_key=True),
    sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
)
seals = declare_seals_table(metadata)


@dataclass(frozen=True)
class Account:
    account_id: str
    billing_day: int
    open_cycle: Cycle


@dataclass(frozen=True)
class CommandState:
    """Everything one license command needs, read (and locked) in one round trip."""

    account: Account
    balance: Balance
    unit_price: Decimal | None
    restorable: int
    held: bool


class SealInputs(NamedTuple):
    """What sealing needs, each keyed by (account, product)."""

    removals_due: dict[tuple[str, str], int]
    bought_on_or_after_end: dict[tuple[str, str], int]
    balances: dict[tuple[str, str], Balance]
    prices: dict[tuple[str, str], Decimal]


# Every statement of the store, with named parameters. A command's statements (the hot path) go
# on the driver connection (``shared.db.execute``/``fetchrow``); sealing's, set-based, through the
# session.
OPEN_ACCOUNT = (
    "insert into accounts (account_id, billing_day, open_cycle_start, open_cycle_end) "
    "values (:account_id, :billing_day, :open_cycle_start, :open_cycle_end) on conflict do nothing"
)
COMMAND_STATE = """
    select a.billing_day, a.open_cycle_start, a.open_cycle_end,
           coalesce(b.purchased, 0) as purchased, coalesce(b.assigned, 0) as assigned,
           coalesce(b.scheduled_for_removal, 0) as scheduled_for_removal,
           coalesce((select unit_price from account_prices where account_id = a.account_id and product = :product),
                    (select unit_price from prices where product = :product)) as unit_price,
           (select coalesce(sum(quantity), 0) from removals r where r.account_id = a.account_id
              and r.product = :product and not r.applied and r.effective_on > :day) as restorable,
           exists(select 1 from assignments s where s.account_id = a.account_id and s.product = :product
                    and s.assignee_id = :assignee_id) as held
    from accounts a left join lateral (
        select * from balances where account_id = a.account_id and product = :product for update
    ) b on true
    where a.account_id = :account_id
    for share of a
    """
HELD_AT = (
    "select coalesce((select purchased from balances where account_id = :account_id and product = :product), 0) "
    "- (select coalesce(sum(quantity_added), 0) from purchases "
    "   where account_id = :account_id and product = :product and purchase_day >= :end_day) "
    "- (select coalesce(sum(quantity), 0) from removals "
    "   where account_id = :account_id and product = :product and not applied and effective_on <= :end_day) "
    "as held"
)
ADD_ASSIGNMENT = (
    "insert into assignments (account_id, product, assignee_id) values (:account_id, :product, :assignee_id)"
)
REMOVE_ASSIGNMENT = (
    "delete from assignments where account_id = :account_id and product = :product and assignee_id = :assignee_id"
)
# With one more write in front (``with other as (...)``): the balance and that write in one round trip.
SAVE_BALANCE = (
    "insert into balances (account_id, product, purchased, assigned, scheduled_for_removal) "
    "values (:account_id, :product, :purchased, :assigned, :scheduled_for_removal) "
    "on conflict (account_id, product) do update set purchased = excluded.purchased, "
    "assigned = excluded.assigned, scheduled_for_removal = excluded.scheduled_for_removal"
)
RECORD_PURCHASE = (
    "insert into purchases (purchase_id, account_id, product, purchase_day, quantity_restored, quantity_added, "
    "unit_price, command_id) values (:purchase_id, :account_id, :product, :purchase_day, :quantity_restored, "
    ":quantity_added, :unit_price, :command_id)), "
    "charges as (insert into proration_charges (purchase_id, account_id, product, quantity, unit_price, amount, "
    "period_start, period_end, late) select :purchase_id, :account_id, :product, :quantity_added, :unit_price, "
    "segment.amount, segment.period_start, segment.period_end, segment.late "
    "from unnest(cast(:amounts as numeric[]), cast(:period_starts as date[]), cast(:period_ends as date[]), "
    "cast(:lates as boolean[])) as segment(amount, period_start, period_end, late)"
)
SCHEDULE_REMOVAL = (
    "insert into removals (account_id, product, quantity, effective_on) "
    "values (:account_id, :product, :quantity, :effective_on)"
)
RESTORABLE_REMOVALS = (
    "select id, quantity from removals where account_id = :account_id and product = :product and not applied "
    "and effective_on > :day order by effective_on desc, id desc for update"
)
DELETE_REMOVAL = "delete from removals where id = :removal_id"
SHRINK_REMOVAL = "update removals set quantity = :quantity where id = :removal_id"

# Sealing, set-based: a batch of accounts at once.
ACCOUNTS_FOR_SEAL = (
    "select account_id, billing_day, open_cycle_start, open_cycle_end from accounts "
    "where account_id = any(:account_ids) order by account_id for update"
)
CYCLE_ENDS = "unnest(cast(:account_ids as text[]), cast(:cycle_ends as date[])) as sealing(account_id, cycle_end)"
REMOVALS_DUE = (
    "select r.account_id, r.product, sum(r.quantity) as quantity from removals r "
    f"join {CYCLE_ENDS} on r.account_id = sealing.account_id and not r.applied "
    "and r.effective_on <= sealing.cycle_end group by 1, 2"
)
BOUGHT_ON_OR_AFTER_END = (
    "select p.account_id, p.product, sum(p.quantity_added) as quantity from purchases p "
    f"join {CYCLE_ENDS} on p.account_id = sealing.account_id and p.purchase_day >= sealing.cycle_end group by 1, 2"
)
BALANCES_FOR_SEAL = (
    "select account_id, product, purchased, assigned, scheduled_for_removal from balances "
    "where account_id = any(:account_ids) order by 1, 2 for update"
)
PRICES_FOR_SEAL = (
    "select sealing.account_id, p.product, coalesce(o.unit_price, p.unit_price) as unit_price "
    "from unnest(cast(:account_ids as text[])) as sealing(account_id) cross join prices p "
    "left join account_prices o on o.account_id = sealing.account_id and o.product = p.product"
)
SAVE_BALANCES = (
    "update balances b set purchased = changed.purchased, assigned = changed.assigned, "
    "scheduled_for_removal = changed.scheduled_for_removal "
    "from unnest(cast(:account_ids as text[]), cast(:products as text[]), cast(:purchased as int[]), "
    "cast(:assigned as int[]), cast(:scheduled_for_removal as int[])) "
    "as changed(account_id, product, purchased, assigned, scheduled_for_removal) "
    "where b.account_id = changed.account_id and b.product = changed.product"
)
SEALED_CYCLES = (
    "unnest(cast(:account_ids as text[]), cast(:cycle_starts as date[]), cast(:cycle_ends as date[])) "
    "as sealing(account_id, cycle_start, cycle_end)"
)
APPLY_REMOVALS_DUE = (
    f"update removals r set applied = true from {SEALED_CYCLES} "
    "where r.account_id = sealing.account_id and not r.applied and r.effective_on <= sealing.cycle_end"
)
SEAL_PRORATIONS = (
    f"update proration_charges c set sealed_in = sealing.cycle_start from {SEALED_CYCLES} "
    "where c.account_id = sealing.account_id and c.sealed_in is null and c.period_start < sealing.cycle_end "
    "returning c.account_id, c.id, c.purchase_id, c.product, c.quantity, c.unit_price, c.amount, "
    "c.period_start, c.period_end, c.late"
)
MOVE_OPEN_CYCLES = (
    "update accounts a set open_cycle_start = moved.open_cycle_start, open_cycle_end = moved.open_cycle_end "
    "from unnest(cast(:account_ids as text[]), cast(:open_cycle_starts as date[]), "
    "cast(:open_cycle_ends as date[])) as moved(account_id, open_cycle_start, open_cycle_end) "
    "where a.account_id = moved.account_id"
)


class LicenseStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.seals = SealLedger(session)
        self._driver: Any = None

    async def _db(self) -> Any:
        """The asyncpg connection in the session's transaction: a command's statements go there
        (about half the client CPU of the same statement through the session)."""
        if self._driver is None:
            self._driver = await driver_connection(self.session)
        return self._driver

    async def open_account(self, account_id: str, billing_day: int, first_cycle: Cycle) -> bool:
        result: Any = await self.session.execute(
            sa.text(OPEN_ACCOUNT),
            {
                "account_id": account_id,
                "billing_day": billing_day,
                "open_cycle_start": first_cycle.start,
                "open_cycle_end": first_cycle.end,
            },
        )
        return bool(result.rowcount)

    async def command_state(
        self, account_id: str, product: str, day: date, assignee_id: str = ""
    ) -> CommandState | None:
        """The account (shared lock), its balance of ``product`` (exclusive lock), the price, the
        removals still pending on ``day`` and whether ``assignee_id`` holds a license."""
        row = await fetchrow(
            await self._db(),
            COMMAND_STATE,
            {"account_id": account_id, "product": product, "day": day, "assignee_id": assignee_id},
        )
        if row is None:
            return None
        account = Account(account_id, row["billing_day"], Cycle(row["open_cycle_start"], row["open_cycle_end"]))
        balance = Balance(row["purchased"], row["assigned"], row["scheduled_for_removal"])
        return CommandState(account, balance, row["unit_price"], int(row["restorable"]), bool(row["held"]))

    async def held_at(self, account_id: str, product: str, end: date) -> int:
        """Licenses bought before ``end`` that are not already leaving by then."""
        held = await self.session.scalar(
            sa.text(HELD_AT), {"account_id": account_id, "product": product, "end_day": end}
        )
        return int(held or 0)

    async def add_assignment(self, account_id: str, product: str, assignee_id: str, after: Balance) -> None:
        await self.save_balance_and(account_id, product, after, ADD_ASSIGNMENT, assignee_id=assignee_id)

    async def remove_assignment(self, account_id: str, product: str, assignee_id: str, after: Balance) -> None:
        await self.save_balance_and(account_id, product, after, REMOVE_ASSIGNMENT, assignee_id=assignee_id)

    async def save_balance_and(
        self, account_id: str, product: str, balance: Balance, statement: str, **params: Any
    ) -> None:
        """Upsert the balance and run one more write in the same statement (one round trip)."""
        await execute(
            await self._db(),
            f"with other as ({statement}) {SAVE_BALANCE}",
            {
                "account_id": account_id,
                "product": product,
                "purchased": balance.purchased,
                "assigned": balance.assigned,
                "scheduled_for_removal": balance.scheduled_for_removal,
                **params,
            },
        )

    async def record_purchase(
        self, account_id: str, product: str, day: date, quote: PurchaseQuote, command_id: uuid.UUID, after: Balance
    ) -> uuid.UUID:
        """The purchase, its proration charges and the new balance, in one statement."""
        purchase_id = uuid.uuid5(command_id, "purchase")
        segments = quote.segments
        await self.save_balance_and(
            account_id,
            product,
            after,
            RECORD_PURCHASE,
            purchase_id=purchase_id,
            purchase_day=day,
            quantity_restored=quote.quantity_restored,
            quantity_added=quote.quantity_added,
            unit_price=quote.unit_price,
            command_id=command_id,
            amounts=[segment.amount for segment in segments],
            period_starts=[segment.period_start for segment in segments],
            period_ends=[segment.period_end for segment in segments],
            lates=[segment.late for segment in segments],
        )
        return purchase_id

    async def schedule_removal(
        self, account_id: str, product: str, quantity: int, effective_on: date, after: Balance
    ) -> None:
        await self.save_balance_and(
            account_id, product, after, SCHEDULE_REMOVAL, quantity=quantity, effective_on=effective_on
        )

    async def restore(self, account_id: str, product: str, quantity: int, day: date) -> None:
        """Take ``quantity`` licenses back from removals pending on ``day``, the latest-effective first."""
        pending = await self.session.execute(
            sa.text(RESTORABLE_REMOVALS), {"account_id": account_id, "product": product, "day": day}
        )
        left = quantity
        for removal in pending.all():
            if left == 0:
                break
            take = min(left, removal.quantity)
            left -= take
            if take == removal.quantity:
                await self.session.execute(sa.text(DELETE_REMOVAL), {"removal_id": removal.id})
            else:
                await self.session.execute(
                    sa.text(SHRINK_REMOVAL), {"removal_id": removal.id, "quantity": removal.quantity - take}
                )

    # ------------------------------------------------------------------ set-based, for sealing many accounts at once
    async def accounts_for_seal(self, account_ids: list[str]) -> dict[str, Account]:
        rows = await self.session.execute(sa.text(ACCOUNTS_FOR_SEAL), {"account_ids": account_ids})
        return {
            row.account_id: Account(row.account_id, row.billing_day, Cycle(row.open_cycle_start, row.open_cycle_end))
            for row in rows
        }

    async def seal_inputs(self, ends: list[tuple[str, date]]) -> SealInputs:
        """For each (account, cycle end): removals due by the end, licenses bought on or after it,
        the balances (locked) and the prices, each keyed by (account, product)."""
        params = {"account_ids": [account for account, _ in ends], "cycle_ends": [end for _, end in ends]}
        due = await self.session.execute(sa.text(REMOVALS_DUE), params)
        later = await self.session.execute(sa.text(BOUGHT_ON_OR_AFTER_END), params)
        held = await self.session.execute(sa.text(BALANCES_FOR_SEAL), params)
        priced = await self.session.execute(sa.text(PRICES_FOR_SEAL), params)
        return SealInputs(
            {(row.account_id, row.product): int(row.quantity) for row in due},
            {(row.account_id, row.product): int(row.quantity) for row in later},
            {
                (row.account_id, row.product): Balance(row.purchased, row.assigned, row.scheduled_for_removal)
                for row in held
            },
            {(row.account_id, row.product): row.unit_price for row in priced},
        )

    async def save_balances(self, changed: dict[tuple[str, str], Balance]) -> None:
        if not changed:
            return
        await self.session.execute(
            sa.text(SAVE_BALANCES),
            {
                "account_ids": [account for account, _ in changed],
                "products": [product for _, product in changed],
                "purchased": [balance.purchased for balance in changed.values()],
                "assigned": [balance.assigned for balance in changed.values()],
                "scheduled_for_removal": [balance.scheduled_for_removal for balance in changed.values()],
            },
        )

    async def finish_seals(self, seals: list[tuple[str, Cycle, Cycle]]) -> dict[str, list[Any]]:
        """Apply the removals due, mark the prorations billed in the sealed cycle and move each
        account's open cycle on; returns the sealed prorations per account."""
        params = {
            "account_ids": [account for account, _, _ in seals],
            "cycle_starts": [cycle.start for _, cycle, _ in seals],
            "cycle_ends": [cycle.end for _, cycle, _ in seals],
            "open_cycle_starts": [following.start for _, _, following in seals],
            "open_cycle_ends": [following.end for _, _, following in seals],
        }
        await self.session.execute(sa.text(APPLY_REMOVALS_DUE), params)
        rows = await self.session.execute(sa.text(SEAL_PRORATIONS), params)
        await self.session.execute(sa.text(MOVE_OPEN_CYCLES), params)
        sealed: dict[str, list[Any]] = {}
        for row in sorted(rows.all(), key=lambda row: row.id):
            sealed.setdefault(row.account_id, []).append(row)
        return sealed
