"""``python -m services.license_orders`` runs the worker; ``... prices`` shows or sets the price catalog."""

from __future__ import annotations

import argparse
import asyncio
from decimal import Decimal

import sqlalchemy as sa

from services.license_orders.settings import Settings


async def _prices(args: argparse.Namespace) -> None:
    from shared.db import make_engine

    engine = make_engine(Settings().database_url)
    async with engine.begin() as conn:
        if args.product:
            table = "account_prices" if args.account else "prices"
            keys = "account_id, product" if args.account else "product"
            values = {"a": args.account, "p": args.product, "u": Decimal(args.unit_price)}
            await conn.execute(
                sa.text(
                    f"insert into {table} ({keys}, unit_price) values ({':a, ' if args.account else ''}:p, :u) "
                    f"on conflict ({keys}) do update set unit_price = excluded.unit_price"
                ),
                values,
            )
        for product, price in await conn.execute(sa.text("select product, unit_price from prices order by 1")):
            print(f"{product:12} {price}")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.license_orders")
    sub = parser.add_subparsers(dest="command")
    prices = sub.add_parser("prices", help="show the catalog, or set one price: prices PRODUCT UNIT_PRICE")
    prices.add_argument("product", nargs="?")
    prices.add_argument("unit_price", nargs="?")
    prices.add_argument("--account", help="set a per-account override instead of the catalog price")
    args = parser.parse_args()
    if args.command == "prices":
        asyncio.run(_prices(args))
        return
    from services.license_orders.app import create_worker

    asyncio.run(create_worker().app.run())


if __name__ == "__main__":
    main()
