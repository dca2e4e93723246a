"""License orders' first schema: runtime tables, accounts, balances, purchases, removals, prices.

Revision ID: 0001
"""

from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from services.license_orders import storage
from shared.runtime.tables import create_runtime_tables

revision = "0001"
down_revision = None

# The catalog operations start from; they change it with `python -m services.license_orders prices`.
DEFAULT_PRICES = {"user": "15.00", "room_phone": "15.00", "shared_line": "20.00", "fax": "10.00"}


def upgrade() -> None:
    create_runtime_tables(op)
    # The first revision creates the service tables as storage.py defined them at the time;
    # every later change gets its own revision with explicit operations.
    storage.metadata.create_all(op.get_bind())
    op.bulk_insert(
        sa.table("prices", sa.column("product", sa.Text), sa.column("unit_price", sa.Numeric)),
        [{"product": product, "unit_price": Decimal(price)} for product, price in DEFAULT_PRICES.items()],
    )
