"""A small TCP proxy for cutting the broker's port in the fault tests (``tc netem`` is not available).

Workers started with ``BILLING_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<proxy port>`` reach the broker
only through it: deploy/stack.sh gives the broker a second listener (``PROXIED``) that advertises
the proxy's port. ``cut()`` resets every connection and refuses new ones until ``restore()``.
"""

from __future__ import annotations

import asyncio
import contextlib


class KafkaPortProxy:
    def __init__(self, listen_port: int, broker_port: int) -> None:
        self.listen_port = listen_port
        self.broker_port = broker_port
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            client_writer.close()
            return
        self.connections |= {client_writer, broker_writer}
        await asyncio.gather(
            self._pipe(client_reader, broker_writer), self._pipe(broker_reader, client_writer), return_exceptions=True
        )
        for writer in (client_writer, broker_writer):
            self.connections.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def cut(self) -> None:
        """The port goes away: open connections are reset, new ones refused."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.connections):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self.connections.clear()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()
