"""``python -m services.usage_metering`` runs the worker."""

import asyncio

from services.usage_metering.app import create_worker

if __name__ == "__main__":
    asyncio.run(create_worker().app.run())
