from services.usage_metering.storage import metadata
from shared.migrations_env import run

run(metadata)
