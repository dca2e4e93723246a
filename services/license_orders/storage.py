"""License orders' own tables and the queries its handlers need (no business rules here)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.license_orders.domain import Balance, PurchaseQuote
from shared.cycles import Cycle

metadata = sa.MetaData()

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
sealed_cycles = sa.Table(
    "sealed_cycles",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("cycle_start", sa.Date, primary_key=True),
    sa.Column("event", sa.LargeBinary, nullable=False, comment="the LicenseCycleSealed sent, re-sent on a repeat"),
)


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


COMMAND_STATE = sa.text(
    """
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
)


class LicenseStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

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

    async def account(self, account_id: str, lock: Literal["share", "update"] = "share") -> Account | None:
        """The account, locked: commands share it, a seal takes it exclusively, so a command never
        works from an open cycle that a concurrent seal has just moved on."""
        query = sa.select(accounts).where(accounts.c.account_id == account_id)
        query = query.with_for_update(read=lock == "share")
        row = (await self.session.execute(query)).first()
        if row is None:
            return None
        return Account(row.account_id, row.billing_day, Cycle(row.open_cycle_start, row.open_cycle_end))

    async def command_state(
        self, account_id: str, product: str, day: date, assignee_id: str = ""
    ) -> CommandState | None:
        """The account (shared lock), its balance of ``product`` (exclusive lock), the price, the
        removals still pending on ``day`` and whether ``assignee_id`` holds a license."""
        row = (
            await self.session.execute(COMMAND_STATE, {"a": account_id, "p": product, "d": day, "who": assignee_id})
        ).first()
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

    async def move_open_cycle(self, account_id: str, cycle: Cycle) -> None:
        await self.session.execute(
            sa.update(accounts)
            .where(accounts.c.account_id == account_id)
            .values(open_cycle_start=cycle.start, open_cycle_end=cycle.end)
        )

    async def balance(self, account_id: str, product: str) -> Balance:
        """The balance, locked for this transaction so concurrent commands serialise per product."""
        row = (
            await self.session.execute(
                sa.select(balances.c.purchased, balances.c.assigned, balances.c.scheduled_for_removal)
                .where(balances.c.account_id == account_id, balances.c.product == product)
                .with_for_update()
            )
        ).first()
        return Balance(*row) if row else Balance()

    async def all_balances(self, account_id: str) -> dict[str, Balance]:
        rows = await self.session.execute(
            sa.select(balances.c.product, balances.c.purchased, balances.c.assigned, balances.c.scheduled_for_removal)
            .where(balances.c.account_id == account_id)
            .order_by(balances.c.product)
            .with_for_update()
        )
        return {row[0]: Balance(*row[1:]) for row in rows}

    async def save_balance(self, account_id: str, product: str, balance: Balance) -> None:
        from sqlalchemy.dialects.postgresql import insert

        values = {
            "purchased": balance.purchased,
            "assigned": balance.assigned,
            "scheduled_for_removal": balance.scheduled_for_removal,
        }
        statement = insert(balances).values(account_id=account_id, product=product, **values)
        await self.session.execute(
            statement.on_conflict_do_update(index_elements=["account_id", "product"], set_=values)
        )

    async def unit_price(self, account_id: str, product: str) -> Decimal | None:
        """The account's own price if it has one, else the catalog price."""
        override = sa.select(account_prices.c.unit_price).where(
            account_prices.c.account_id == account_id, account_prices.c.product == product
        )
        catalog = sa.select(prices.c.unit_price).where(prices.c.product == product)
        price = await self.session.scalar(override)
        if price is None:
            price = await self.session.scalar(catalog)
        return price

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
        await self.session.execute(
            sa.text(
                f"with other as ({statement}) "
                "insert into balances (account_id, product, purchased, assigned, scheduled_for_removal) "
                "values (:account_id, :product, :purchased, :assigned, :scheduled) "
                "on conflict (account_id, product) do update set purchased = excluded.purchased, "
                "assigned = excluded.assigned, scheduled_for_removal = excluded.scheduled_for_removal"
            ),
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

    async def restorable(self, account_id: str, product: str, day: date) -> int:
        """Licenses scheduled for removal that are still pending on ``day`` (effective after it)."""
        total = await self.session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(removals.c.quantity), 0)).where(
                removals.c.account_id == account_id,
                removals.c.product == product,
                ~removals.c.applied,
                removals.c.effective_on > day,
            )
        )
        return int(total or 0)

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

    async def removals_due(self, account_id: str, by: date) -> dict[str, int]:
        rows = await self.session.execute(
            sa.select(removals.c.product, sa.func.sum(removals.c.quantity))
            .where(removals.c.account_id == account_id, ~removals.c.applied, removals.c.effective_on <= by)
            .group_by(removals.c.product)
        )
        return {product: int(total) for product, total in rows}

    async def mark_removals_applied(self, account_id: str, by: date) -> None:
        await self.session.execute(
            sa.update(removals)
            .where(removals.c.account_id == account_id, ~removals.c.applied, removals.c.effective_on <= by)
            .values(applied=True)
        )

    async def added_on_or_after(self, account_id: str, day: date) -> dict[str, int]:
        rows = await self.session.execute(
            sa.select(purchases.c.product, sa.func.sum(purchases.c.quantity_added))
            .where(purchases.c.account_id == account_id, purchases.c.purchase_day >= day)
            .group_by(purchases.c.product)
        )
        return {product: int(total) for product, total in rows}

    async def seal_prorations(self, account_id: str, cycle: Cycle) -> list[Any]:
        """Mark every unsealed proration that starts before the cycle's end as billed in it."""
        rows = await self.session.execute(
            sa.update(proration_charges)
            .where(
                proration_charges.c.account_id == account_id,
                proration_charges.c.sealed_in.is_(None),
                proration_charges.c.period_start < cycle.end,
            )
            .values(sealed_in=cycle.start)
            .returning(
                proration_charges.c.id,
                proration_charges.c.purchase_id,
                proration_charges.c.product,
                proration_charges.c.quantity,
                proration_charges.c.unit_price,
                proration_charges.c.amount,
                proration_charges.c.period_start,
                proration_charges.c.period_end,
                proration_charges.c.late,
            )
        )
        return sorted(rows.all(), key=lambda row: row.id)

    async def sealed_event(self, account_id: str, cycle_start: date) -> bytes | None:
        return await self.session.scalar(
            sa.select(sealed_cycles.c.event).where(
                sealed_cycles.c.account_id == account_id, sealed_cycles.c.cycle_start == cycle_start
            )
        )

    async def record_seal(self, account_id: str, cycle_start: date, event: bytes) -> None:
        await self.session.execute(
            sa.insert(sealed_cycles).values(account_id=account_id, cycle_start=cycle_start, event=event)
        )
