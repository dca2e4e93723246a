"""Alert board's handlers: the alerts it consumes, and the page's JSON API and live feed.

Consumer side: each alert is recorded and moves its account's standing (``domain.apply``);
cycle closes start the next cycle of the accounts on the board, set-based. Web side: thin
Starlette endpoints over ``BoardQueries``; the live feed is a Server-Sent Events stream fed by
``LiveFeed``, which wakes on the notification each recording transaction sends at commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from contracts import messages as m
from services.alert_board import domain
from services.alert_board.queries import BoardQueries
from services.alert_board.settings import Settings
from services.alert_board.storage import ALERTS_CHANNEL, BoardStore
from shared.money import tidy
from shared.runtime.registry import HandlerRegistry
from shared.runtime.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)
registry = HandlerRegistry()
Work = UnitOfWork[BoardStore, Settings]
STATIC = Path(__file__).parent / "static"

AlertMessage = (
    m.CallingCreditThresholdReached
    | m.CallingBlocked
    | m.CallingUnblocked
    | m.CallingCreditCapChanged
    | m.CommandRejected
)


def as_alert(message: AlertMessage) -> domain.Alert:
    account, at = message.account_id, message.occurred_at
    if isinstance(message, m.CommandRejected):
        return domain.Alert("cap_change_refused", account, at, None, reason=message.reason_code)
    kind, percent, reason = "cap_changed", None, None
    if isinstance(message, m.CallingCreditThresholdReached):
        kind, percent = "threshold", message.threshold_percent
    elif isinstance(message, m.CallingBlocked):
        kind = "blocked"
    elif isinstance(message, m.CallingUnblocked):
        kind, reason = "unblocked", message.reason
    return domain.Alert(kind, account, at, message.cycle_start, message.accrued, message.cap, percent, reason)


async def _alert(unit: Work, message: AlertMessage) -> None:
    alert = as_alert(message)
    store = unit.store
    current = (await store.standings([alert.account_id])).get(alert.account_id)
    standing = domain.apply(current, alert)
    shown = alert_json(alert, message.message_id) | {"standing": standing_json(standing) if standing else None}
    await store.record(message.message_id, alert, json.dumps(shown))
    if standing is not None and standing != current:
        await store.save([standing])


registry.on(m.CallingCreditThresholdReached)(_alert)
registry.on(m.CallingBlocked)(_alert)
registry.on(m.CallingUnblocked)(_alert)
registry.on(m.CallingCreditCapChanged)(_alert)


@registry.on(m.CommandRejected)
async def rejected(unit: Work, message: m.CommandRejected) -> None:
    """A refused cap change is on the feed; other topics' rejections (``billing.cycles``) are not."""
    if message.command_type == m.SetCallingCreditCap.model_fields["type"].default:
        await _alert(unit, message)


@registry.on_batch(m.BillingCycleClosed)
async def cycles_closed(unit: Work, closes: list[m.BillingCycleClosed]) -> None:
    """A cycle close for every account at once: only those on the board have a standing to move."""
    store = unit.store
    standings = await store.standings(c.account_id for c in closes)
    moved: dict[str, domain.Standing] = {}
    for close in closes:
        current = moved.get(close.account_id) or standings.get(close.account_id)
        event = domain.CycleClosed(close.account_id, close.occurred_at, close.cycle_start, close.next_cycle_start)
        after = domain.close_cycle(current, event)
        if after is not None and after != current:
            moved[close.account_id] = after
    await store.save(moved.values())
    if moved:
        await store.standings_changed()


# ---------------------------------------------------------------------------------------------- web side


def _money(amount: Any) -> str | None:
    return None if amount is None else str(tidy(amount))


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def standing_json(s: domain.Standing) -> dict[str, Any]:
    return {
        "account_id": s.account_id,
        "cycle_start": _iso(s.cycle_start),
        "cap": _money(s.cap),
        "accrued": _money(s.accrued),
        "threshold_percent": s.threshold_percent,
        "blocked": s.blocked,
        "blocked_since": _iso(s.blocked_since),
        "since": _iso(s.since),
        "updated_at": _iso(s.updated_at),
    }


def alert_json(alert: domain.Alert, message_id: Any, alert_id: int | None = None) -> dict[str, Any]:
    accrued = tidy(alert.accrued) if alert.accrued is not None else None
    cap = tidy(alert.cap) if alert.cap is not None else None
    shown = {
        "message_id": str(message_id),
        "account_id": alert.account_id,
        "kind": alert.kind,
        "occurred_at": _iso(alert.occurred_at),
        "cycle_start": _iso(alert.cycle_start),
        "accrued": None if accrued is None else str(accrued),
        "cap": None if cap is None else str(cap),
        "threshold_percent": alert.threshold_percent,
        "reason": alert.reason,
        "text": domain.describe(
            domain.Alert(
                alert.kind,
                alert.account_id,
                alert.occurred_at,
                alert.cycle_start,
                accrued,
                cap,
                alert.threshold_percent,
                alert.reason,
            )
        ),
    }
    return shown if alert_id is None else {"id": alert_id, **shown}


def row_json(row: Any) -> dict[str, Any]:
    alert = domain.Alert(
        row.kind,
        row.account_id,
        row.occurred_at,
        row.cycle_start,
        row.accrued,
        row.cap,
        row.threshold_percent,
        row.reason,
    )
    return alert_json(alert, row.message_id, row.id)


class LiveFeed:
    """Hands each newly recorded alert to every open event stream, once.

    Each recording transaction sends ``NOTIFY board_alerts`` at commit (from any replica) with
    the alert as shown, which goes out at once. It also polls, since a notification can be lost
    (one sent while its connection was down): rows are read by id with a look-back window, since
    ids are handed out at insert and two transactions may commit out of id order.
    """

    LOOK_BACK = 200
    QUEUE_SIZE = 1000

    def __init__(self, queries: BoardQueries, dsn: str, poll_interval_s: float = 1.0) -> None:
        self.queries = queries
        self.dsn = dsn
        self.poll_interval_s = poll_interval_s
        self.last_id = 0
        self._sent: set[int] = set()
        self._clients: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.last_id = await self.queries.latest_id()
        self._task = asyncio.create_task(self._run(), name="board-live-feed")

    async def stop(self) -> None:
        for queue in self._clients:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # ends the stream
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self.QUEUE_SIZE)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._clients.discard(queue)

    async def _run(self) -> None:
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(self.dsn)
                await connection.add_listener(ALERTS_CHANNEL, self._notified)
                while not connection.is_closed():
                    await self.deliver()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
                    self._wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live feed interrupted, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 2)

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        alert_id, _, shown = payload.partition(" ")
        if alert_id == "standings":
            self._send({"kind": "standings"})
        elif alert_id.isdigit() and shown:
            self._send({"id": int(alert_id), **json.loads(shown)})
        else:
            self._wake.set()

    async def deliver(self) -> None:
        """What the notifications missed, with each account's standing as it is now."""
        rows = await self.queries.alerts_after(max(0, self.last_id - self.LOOK_BACK))
        rows = [row for row in rows if row.id not in self._sent]
        standings = await self.queries.standings([row.account_id for row in rows]) if rows else {}
        for row in rows:
            standing = standings.get(row.account_id)
            self._send(row_json(row) | {"standing": standing_json(standing) if standing else None})
        floor = self.last_id - self.LOOK_BACK
        self._sent = {i for i in self._sent if i > floor}

    def _send(self, event: dict[str, Any]) -> None:
        if "id" in event:
            if event["id"] in self._sent:
                return
            self._sent.add(event["id"])
            self.last_id = max(self.last_id, event["id"])
        for queue in list(self._clients):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a stalled page: end its stream; it reconnects and catches up
                self._clients.discard(queue)


def _event(event: dict[str, Any]) -> str:
    if "id" not in event:  # the lists changed without an alert (a cycle close)
        return f"event: {event['kind']}\ndata: {{}}\n\n"
    return f"id: {event['id']}\nevent: alert\ndata: {json.dumps(event)}\n\n"


def web_app(queries: BoardQueries, feed: LiveFeed, keep_alive_s: float = 15.0) -> Starlette:
    """The page (``/``), its JSON API (``/api/...``) and the live feed (``/api/stream``)."""

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def now(_request: Request) -> Response:
        blocked, near = await asyncio.gather(queries.blocked(), queries.near_cap())
        return JSONResponse(
            {"blocked": [standing_json(s) for s in blocked], "near_cap": [standing_json(s) for s in near]}
        )

    async def feed_page(request: Request) -> Response:
        before = _int(request.query_params.get("before"))
        limit = min(_int(request.query_params.get("limit")) or 50, 500)
        return JSONResponse({"alerts": [row_json(r) for r in await queries.feed(before, limit)]})

    async def search(request: Request) -> Response:
        text = request.query_params.get("q", "").strip()
        return JSONResponse({"accounts": await queries.search(text) if text else []})

    async def account(request: Request) -> Response:
        account_id = request.path_params["account_id"]
        standing, rows = await asyncio.gather(queries.standing(account_id), queries.history(account_id))
        cycles: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            cycles.setdefault(_iso(row.cycle_start) or "", []).append(row_json(row))
        return JSONResponse(
            {
                "account_id": account_id,
                "standing": standing_json(standing) if standing else None,
                "cycles": [{"cycle_start": c or None, "alerts": a} for c, a in sorted(cycles.items(), reverse=True)],
            },
            status_code=200 if standing or rows else 404,
        )

    async def stream(request: Request) -> Response:
        after = _int(request.query_params.get("after"))
        after = _int(request.headers.get("last-event-id")) or after  # a reconnect says where it was
        return StreamingResponse(
            _events(after, queries, feed, keep_alive_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/now", now),
            Route("/api/feed", feed_page),
            Route("/api/accounts", search),
            Route("/api/accounts/{account_id}", account),
            Route("/api/stream", stream),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


async def _events(after: int | None, queries: BoardQueries, feed: LiveFeed, keep_alive_s: float) -> AsyncIterator[str]:
    """What one page's stream gets: what it missed since ``after`` (a reconnect), then each new alert."""
    queue = feed.subscribe()  # before reading the backlog, so nothing falls between the two
    backlog: set[int] = set()  # the backlog and the queue may overlap: each alert once
    try:
        yield "retry: 1000\n\n"
        if after is not None:
            for row in await queries.alerts_after(after):
                alert = row_json(row)
                backlog.add(alert["id"])
                yield _event(alert)
        while True:
            try:
                item: dict[str, Any] | None = await asyncio.wait_for(queue.get(), keep_alive_s)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is None:
                return  # the board is stopping; the page reconnects to the next one
            if item.get("id") in backlog:
                continue
            yield _event(item)
    finally:
        feed.unsubscribe(queue)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
