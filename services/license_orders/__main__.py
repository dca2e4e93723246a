"""``python -m services.license_orders`` runs the worker.

``... prices ...`` is a thin alias of ``billing prices ...`` (the operators' command,
``billing_cli``), run as its own process so this service imports no other service's code.
"""

from __future__ import annotations

import asyncio
import os
import sys


def main() -> None:
    if sys.argv[1:2] == ["prices"]:
        os.execv(sys.executable, [sys.executable, "-m", "billing_cli", *sys.argv[1:]])
    from services.license_orders.app import create_worker

    asyncio.run(create_worker().app.run())


if __name__ == "__main__":
    main()
