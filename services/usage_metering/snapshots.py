"""The meters a worker folds in memory, written back every so often, and dropped when its share
of usage.calls changes.

A snapshot says how far into its meter's calls it reaches (``through_seq``); the view ``meters``
adds the calls after it. So a snapshot is never needed for exactness, only to keep short what a
new owner (after a crash or a rebalance) reads: a worker killed between a batch's commit and the
next snapshot loses nothing, its calls are in the ledger. A snapshot only moves forward: one from a
worker whose memory is behind the database (another replica owns the meter now, or a cap change
or a seal wrote it since) is refused, and that account's meters are dropped from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import ConsumerRebalanceListener
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.usage_metering.storage import AccountCache, MeterMemory, MeterStore

log = logging.getLogger(__name__)

# Rows per statement and transaction. A round writes back every meter a worker folded since the
# last one (10,000 and more over 30 s): in one statement that took PostgreSQL 80-220 ms and the
# worker's event loop tens of ms to build, which the batches of calls meanwhile waited for (an
# alert's latency); in chunks, with the event loop let go between them, each wait is a tenth.
CHUNK = 1_000


class MeterSnapshots:
    """Writes back the meters in memory whose snapshot is behind: every ``interval_s`` seconds,
    or as soon as ``MeterMemory.snapshot_batches`` batches committed since the last one (wall
    time only paces the writes, it never decides a business outcome). A clean stop writes once more."""

    def __init__(self, memory: MeterMemory, sessions: async_sessionmaker[AsyncSession], interval_s: float) -> None:
        self.memory = memory
        self.sessions = sessions
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="meter-snapshots")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.write()
        except Exception as exc:  # the ledger holds every call: the next owner reads a little more
            log.warning("last meter snapshot not written", extra={"error": repr(exc)})

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.memory.snapshot_due.wait(), self.interval_s)
            try:
                await self.write()
            except Exception as exc:
                log.warning("meter snapshots not written, trying again later", extra={"error": repr(exc)})

    async def write(self) -> int:
        """One round: returns how many snapshots were written."""
        unsaved = self.memory.unsaved()
        written = 0
        for start in range(0, len(unsaved), CHUNK):
            chunk = unsaved[start : start + CHUNK]
            async with self.sessions() as session, session.begin():
                store = MeterStore(session)
                await store.share_metering()  # never while a cap change or a seal reads the meters
                saved = await store.save_snapshots(chunk)
            refused = {account_id for account_id, t in chunk if (account_id, t.cycle.start) not in saved}
            self.memory.drop(refused)
            for account_id, tracked in chunk:
                if account_id not in refused:
                    self.memory.saved(account_id, tracked.cycle.start, tracked.position)
            written += len(saved)
            await asyncio.sleep(0)  # the batches of calls waiting for the event loop go first
        return written


class DropMetersOnRebalance(ConsumerRebalanceListener):
    """The calls consumer's partitions were revoked or assigned: its meters are read again from
    the database, so a worker that gets a partition back never folds into what it held before
    another replica owned it; its accounts too, so it holds those of the partitions it owns."""

    def __init__(self, memory: MeterMemory, accounts: AccountCache) -> None:
        self.memory = memory
        self.accounts = accounts

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.memory.clear()
        self.accounts.clear()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.memory.clear()
        self.accounts.clear()
