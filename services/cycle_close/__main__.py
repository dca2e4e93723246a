"""``python -m services.cycle_close`` runs the worker.

``... close-cycles ...`` is a thin alias of ``billing close-cycles ...`` (the operators' command,
``billing_cli``), run as its own process so this service imports no other service's code.
"""

from __future__ import annotations

import asyncio
import os
import sys


def main() -> None:
    if sys.argv[1:2] == ["close-cycles"]:
        os.execv(sys.executable, [sys.executable, "-m", "billing_cli", *sys.argv[1:]])
    from services.cycle_close.app import create_worker

    asyncio.run(create_worker().app.run())


if __name__ == "__main__":
    main()
