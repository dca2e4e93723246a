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


COMMAND_STATE = """
    select a.billing_day, a.open_cycle_start, a.open_cycle_end,
           coalesce(b.purchased, 0), coalesce(b.assigned, 0), coalesce(b.scheduled_for_removal, 0),
           coalesce((select unit_price from account_prices where account_id = a.account_id and product = :p),
                    (select unit_price from prices where product = :p)),
           (select coalesce(sum(quantity), 0) from removals r where r.account_id = a.account_id
              and r.product = :p and not r.applied and r.effective_on > :d),
           exists(select 1 from assignments s where s.account_id = a.account_id and s.product = :p
                    and s.assignee_id = :who)
    from accounts a left join lateral (
        select * from balances where account_id = a.account_id and product = :p for update
    ) b on true
    where a.account_id = :a
    for share of a
    """


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
        from sqlalchemy.dialects.postgresql import insert

        statement = (
            insert(accounts)
            .values(
                account_id=account_id,
                billing_day=billing_day,
                open_cycle_start=first_cycle.start,
                open_cycle_end=first_cycle.end,
            )
            .on_conflict_do_nothing()
        )
        result: Any = await self.session.execute(statement)
        return bool(result.rowcount)

    async def command_state(
        self, account_id: str, product: str, day: date, assignee_id: str = ""
    ) -> CommandState | None:
        """The account (shared lock), its balance of ``product`` (exclusive lock), the price, the
        removals still pending on ``day`` and whether ``assignee_id`` holds a license."""
        row = await fetchrow(
            await self._db(), COMMAND_STATE, {"a": account_id, "p": product, "d": day, "who": assignee_id}
        )
        if row is None:
            return None
        account = Account(account_id, row[0], Cycle(row[1], row[2]))
        return CommandState(account, Balance(row[3], row[4], row[5]), row[6], int(row[7]), bool(row[8]))

    async def held_at(self, account_id: str, product: str, end: date) -> int:
        """Licenses bought before ``end`` that are not already leaving by then."""
        value = await self.session.scalar(
            sa.text(
                "select coalesce((select purchased from balances where account_id = :a and product = :p), 0) "
                "- (select coalesce(sum(quantity_added), 0) from purchases "
                "   where account_id = :a and product = :p and purchase_day >= :e) "
                "- (select coalesce(sum(quantity), 0) from removals "
                "   where account_id = :a and product = :p and not applied and effective_on <= :e)"
            ),
            {"a": account_id, "p": product, "e": end},
        )
        return int(value or 0)

    async def add_assignment(self, account_id: str, product: str, assignee_id: str, after: Balance) -> None:
        await self.save_balance_and(
            account_id,
            product,
            after,
            "insert into assignments (account_id, product, assignee_id) values (:account_id, :product, :who)",
            who=assignee_id,
        )

    async def remove_assignment(self, account_id: str, product: str, assignee_id: str, after: Balance) -> None:
        await self.save_balance_and(
            account_id,
            product,
            after,
            "delete from assignments where account_id = :account_id and product = :product and assignee_id = :who",
            who=assignee_id,
        )

    async def save_balance_and(
        self, account_id: str, product: str, balance: Balance, statement: str, **params: Any
    ) -> None:
        """Upsert the balance and run one more write in the same statement (one round trip)."""
        await execute(
            await self._db(),
            f"with other as ({statement}) "
            "insert into balances (account_id, product, purchased, assigned, scheduled_for_removal) "
            "values (:account_id, :product, :purchased, :assigned, :scheduled) "
            "on conflict (account_id, product) do update set purchased = excluded.purchased, "
            "assigned = excluded.assigned, scheduled_for_removal = excluded.scheduled_for_removal",
            {
                "account_id": account_id,
                "product": product,
                "purchased": balance.purchased,
                "assigned": balance.assigned,
                "scheduled": balance.scheduled_for_removal,
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
            "insert into purchases (purchase_id, account_id, product, purchase_day, quantity_restored, "
            "quantity_added, unit_price, command_id) values (:pid, :account_id, :product, :day, :restored, :added, "
            ":price, :cid)), charges as (insert into proration_charges (purchase_id, account_id, product, quantity, "
            "unit_price, amount, period_start, period_end, late) select :pid, :account_id, :product, :added, :price, "
            "s.amount, s.period_start, s.period_end, s.late from unnest(cast(:amounts as numeric[]), "
            "cast(:starts as date[]), cast(:ends as date[]), cast(:lates as boolean[])) "
            "as s(amount, period_start, period_end, late)",
            pid=purchase_id,
            day=day,
            restored=quote.quantity_restored,
            added=quote.quantity_added,
            price=quote.unit_price,
            cid=command_id,
            amounts=[seg.amount for seg in segments],
            starts=[seg.period_start for seg in segments],
            ends=[seg.period_end for seg in segments],
            lates=[seg.late for seg in segments],
        )
        return purchase_id

    async def schedule_removal(
        self, account_id: str, product: str, quantity: int, effective_on: date, after: Balance
    ) -> None:
        await self.save_balance_and(
            account_id,
            product,
            after,
            "insert into removals (account_id, product, quantity, effective_on) "
            "values (:account_id, :product, :quantity, :effective_on)",
            quantity=quantity,
            effective_on=effective_on,
        )

    async def restore(self, account_id: str, product: str, quantity: int, day: date) -> None:
        """Take ``quantity`` licenses back from removals pending on ``day``, the latest-effective first."""
        rows = (
            await self.session.execute(
                sa.select(removals.c.id, removals.c.quantity)
                .where(
                    removals.c.account_id == account_id,
                    removals.c.product == product,
                    ~removals.c.applied,
                    removals.c.effective_on > day,
                )
                .order_by(removals.c.effective_on.desc(), removals.c.id.desc())
                .with_for_update()
            )
        ).all()
        left = quantity
        for removal_id, scheduled in rows:
            if left == 0:
                break
            take = min(left, scheduled)
            left -= take
            if take == scheduled:
                await self.session.execute(sa.delete(removals).where(removals.c.id == removal_id))
            else:
                await self.session.execute(
                    sa.update(removals).where(removals.c.id == removal_id).values(quantity=scheduled - take)
                )

    # ------------------------------------------------------------------ set-based, for sealing many accounts at once
    async def accounts_for_seal(self, account_ids: list[str]) -> dict[str, Account]:
        rows = await self.session.execute(
            sa.text(
                "select account_id, billing_day, open_cycle_start, open_cycle_end from accounts "
                "where account_id = any(:ids) order by account_id for update"
            ),
            {"ids": account_ids},
        )
        return {r[0]: Account(r[0], r[1], Cycle(r[2], r[3])) for r in rows}

    async def seal_inputs(self, ends: list[tuple[str, date]]) -> SealInputs:
        """For each (account, cycle end): removals due by the end, licenses bought on or after it,
        the balances (locked) and the prices, each keyed by (account, product)."""
        params = {"a": [a for a, _ in ends], "e": [e for _, e in ends]}
        keys = "unnest(cast(:a as text[]), cast(:e as date[])) as k(a, e)"
        due = await self.session.execute(
            sa.text(
                f"select r.account_id, r.product, sum(r.quantity) from removals r join {keys} "
                "on r.account_id = k.a and not r.applied and r.effective_on <= k.e group by 1, 2"
            ),
            params,
        )
        later = await self.session.execute(
            sa.text(
                f"select p.account_id, p.product, sum(p.quantity_added) from purchases p join {keys} "
                "on p.account_id = k.a and p.purchase_day >= k.e group by 1, 2"
            ),
            params,
        )
        held = await self.session.execute(
            sa.text(
                "select account_id, product, purchased, assigned, scheduled_for_removal from balances "
                "where account_id = any(:a) order by 1, 2 for update"
            ),
            params,
        )
        priced = await self.session.execute(
            sa.text(
                "select k.a, p.product, coalesce(o.unit_price, p.unit_price) from unnest(cast(:a as text[])) as k(a) "
                "cross join prices p left join account_prices o on o.account_id = k.a and o.product = p.product"
            ),
            params,
        )
        return SealInputs(
            {(r[0], r[1]): int(r[2]) for r in due},
            {(r[0], r[1]): int(r[2]) for r in later},
            {(r[0], r[1]): Balance(r[2], r[3], r[4]) for r in held},
            {(r[0], r[1]): r[2] for r in priced},
        )

    async def save_balances(self, changed: dict[tuple[str, str], Balance]) -> None:
        if not changed:
            return
        await self.session.execute(
            sa.text(
                "update balances b set purchased = r.p, assigned = r.x, scheduled_for_removal = r.s "
                "from unnest(cast(:a as text[]), cast(:k as text[]), cast(:p as int[]), cast(:x as int[]), "
                "cast(:s as int[])) as r(a, k, p, x, s) where b.account_id = r.a and b.product = r.k"
            ),
            {
                "a": [a for a, _ in changed],
                "k": [k for _, k in changed],
                "p": [b.purchased for b in changed.values()],
                "x": [b.assigned for b in changed.values()],
                "s": [b.scheduled_for_removal for b in changed.values()],
            },
        )

    async def finish_seals(self, seals: list[tuple[str, Cycle, Cycle]]) -> dict[str, list[Any]]:
        """Apply the removals due, mark the prorations billed in the sealed cycle and move each
        account's open cycle on; returns the sealed prorations per account."""
        params = {
            "a": [a for a, _, _ in seals],
            "s": [c.start for _, c, _ in seals],
            "e": [c.end for _, c, _ in seals],
            "ns": [n.start for _, _, n in seals],
            "ne": [n.end for _, _, n in seals],
        }
        keys = "unnest(cast(:a as text[]), cast(:s as date[]), cast(:e as date[])) as k(a, s, e)"
        await self.session.execute(
            sa.text(
                f"update removals r set applied = true from {keys} "
                "where r.account_id = k.a and not r.applied and r.effective_on <= k.e"
            ),
            params,
        )
        rows = await self.session.execute(
            sa.text(
                f"update proration_charges c set sealed_in = k.s from {keys} "
                "where c.account_id = k.a and c.sealed_in is null and c.period_start < k.e "
                "returning c.account_id, c.id, c.purchase_id, c.product, c.quantity, c.unit_price, c.amount, "
                "c.period_start, c.period_end, c.late"
            ),
            params,
        )
        await self.session.execute(
            sa.text(
                "update accounts a set open_cycle_start = k.ns, open_cycle_end = k.ne "
                "from unnest(cast(:a as text[]), cast(:ns as date[]), cast(:ne as date[])) as k(a, ns, ne) "
                "where a.account_id = k.a"
            ),
            params,
        )
        sealed: dict[str, list[Any]] = {}
        for row in sorted(rows.all(), key=lambda r: r.id):
            sealed.setdefault(row.account_id, []).append(row)
        return sealed
