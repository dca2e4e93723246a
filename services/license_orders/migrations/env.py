from services.license_orders.storage import metadata
from shared.migrations_env import run

run(metadata)
