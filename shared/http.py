"""A small HTTP listener inside a worker's event loop: uvicorn serving an ASGI app on one port.

Used for every worker's ``/metrics``, ``/healthz`` and ``/readyz`` and for the alert board's page.
The worker's own signal handling stays in charge (FastStream stops the process on SIGTERM and
then stops the listener), and a port that is taken is an error that names the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


class PortInUse(RuntimeError):
    pass


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would take over SIGINT/SIGTERM from the worker; the worker stops us instead.
        yield


class Listener:
    """Serves ``app`` on ``host:port`` from ``start()`` until ``stop()``."""

    def __init__(self, app: Any, host: str, port: int, setting: str) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.setting = setting
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"{self.host}:{self.port} is already in use (another process listens there); "
                    f"set {self.setting} to a free port, or 0 to turn this listener off"
                ) from None
            raise
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    async def start(self) -> None:
        sock = self._bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the worker's logging as configured (JSON lines), not uvicorn's own
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,  # open event streams would otherwise hold the shutdown
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"http-{self.port}")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError(f"the HTTP listener on {self.host}:{self.port} stopped at start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=5)
        self._server = None
