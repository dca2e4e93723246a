from services.alert_board.storage import metadata
from shared.migrations_env import run

run(metadata)
