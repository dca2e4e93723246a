"""What license orders tells operators about its own data (``billing account``, ``billing prices``).

Reads and the one operator write it owns (prices) go to this service's database only, with this
service's settings; the ``billing`` command composes them with the other services' queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.messages import PRODUCTS
from services.license_orders.settings import Settings
from shared.db import make_engine
from shared.runtime.dead_letters import DeadLetters


@dataclass(frozen=True)
class ProductLicenses:
    product: str
    purchased: int
    assigned: int
    scheduled_for_removal: int

    @property
    def available(self) -> int:
        return max(0, self.purchased - self.assigned - self.scheduled_for_removal)


@dataclass(frozen=True)
class AccountLicenses:
    account_id: str
    cycle_start: date
    cycle_end: date
    products: list[ProductLicenses]


@dataclass(frozen=True)
class Price:
    product: str
    unit_price: Decimal
    catalog_price: Decimal
    overridden: bool


class UnknownProduct(ValueError):
    """A price for a product the catalog does not have."""


class LicenseQueries:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dead_letters = DeadLetters("license_orders", engine)

    async def account(self, account_id: str) -> AccountLicenses | None:
        """The account's licenses per product (every product, zeros included); None when unknown."""
        async with self.engine.connect() as conn:
            cycle = (
                await conn.execute(
                    sa.text("select open_cycle_start, open_cycle_end from accounts where account_id = :a"),
                    {"a": account_id},
                )
            ).first()
            if cycle is None:
                return None
            rows = await conn.execute(
                sa.text(
                    "select product, purchased, assigned, scheduled_for_removal from balances where account_id = :a"
                ),
                {"a": account_id},
            )
            held = {r[0]: ProductLicenses(r[0], r[1], r[2], r[3]) for r in rows}
        products = [held.pop(p, ProductLicenses(p, 0, 0, 0)) for p in PRODUCTS] + sorted(
            held.values(), key=lambda p: p.product
        )
        return AccountLicenses(account_id, cycle[0], cycle[1], products)

    async def prices(self, account_id: str | None = None) -> list[Price]:
        """The catalog, or what ``account_id`` pays (its overrides where it has one)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "select p.product, coalesce(o.unit_price, p.unit_price), p.unit_price, o.unit_price is not null "
                    "from prices p left join account_prices o on o.product = p.product and o.account_id = :a "
                    "order by p.product"
                ),
                {"a": account_id},
            )
            return [Price(r[0], r[1], r[2], r[3]) for r in rows]

    async def set_price(self, product: str, unit_price: Decimal, account_id: str | None = None) -> None:
        """Change the catalog price of ``product``, or set ``account_id``'s own price for it."""
        async with self.engine.begin() as conn:
            known = await conn.scalar(sa.text("select true from prices where product = :p"), {"p": product})
            if not known:
                raise UnknownProduct(product)
            if account_id is None:
                await conn.execute(
                    sa.text("update prices set unit_price = :u where product = :p"), {"p": product, "u": unit_price}
                )
            else:
                await conn.execute(
                    sa.text(
                        "insert into account_prices (account_id, product, unit_price) values (:a, :p, :u) "
                        "on conflict (account_id, product) do update set unit_price = excluded.unit_price"
                    ),
                    {"a": account_id, "p": product, "u": unit_price},
                )

    async def close(self) -> None:
        await self.engine.dispose()


def connect(settings: Settings | None = None) -> LicenseQueries:
    return LicenseQueries(make_engine((settings or Settings()).database_url, pool_size=2))
