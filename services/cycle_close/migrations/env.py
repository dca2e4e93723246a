from services.cycle_close.storage import metadata
from shared.migrations_env import run

run(metadata)
