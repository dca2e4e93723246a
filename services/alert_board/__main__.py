"""``python -m services.alert_board`` runs the board: its consumer and its web page."""

import asyncio

from services.alert_board.app import create_worker

if __name__ == "__main__":
    asyncio.run(create_worker().app.run())
