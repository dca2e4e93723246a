"""The alert board over the real broker and database, and its page in headless Chromium.

The board runs as its own process here (started and restarted by these tests); alerts are
published to ``metering.alerts`` as usage metering would.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest

from contracts import messages as m
from tests.conftest import ROOT, Workers, free_port
from tests.support import Bus, new_account

pytestmark = pytest.mark.stack
ALERTS = "metering.alerts"
NOV, DEC = date(2026, 11, 1), date(2026, 12, 1)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HAVE_CHROMIUM = CHROMIUM.exists()
SCREENSHOT = ROOT / ".stack" / "test-logs" / "board.png"


@dataclass
class Board:
    workers: Workers
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> subprocess.Popen[bytes]:
        return self.workers.start("alert_board", BILLING_BOARD_PORT=str(self.port))

    def stop(self) -> None:
        self.workers.stop("alert_board")

    async def ready(self, timeout: float = 90.0) -> None:
        """Until the board's /readyz says ready (its consumer in the group, its database there)."""
        metrics = f"http://127.0.0.1:{self.workers.metrics_ports['alert_board']}/readyz"
        deadline = time.monotonic() + timeout
        async with httpx2.AsyncClient(timeout=5) as client:
            while True:
                try:
                    if (await client.get(metrics)).status_code == 200 and (
                        await client.get(self.url)
                    ).status_code == 200:
                        return
                except httpx2.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the board was not ready after {timeout} s (.stack/test-logs/alert_board.log)"
                    )
                await asyncio.sleep(0.1)

    async def get(self, path: str) -> Any:
        async with httpx2.AsyncClient(timeout=5) as client:
            return (await client.get(self.url.rstrip("/") + path)).json()

    async def wait_for(self, path: str, check: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            body = await self.get(path)
            if check(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on {path}: last answer {body}")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def board(workers: Workers) -> Iterator[Board]:
    started = Board(workers, free_port())
    started.start()
    yield started
    if "alert_board" in workers.procs:
        started.stop()


@pytest.fixture
async def ready_board(stack: Bus, board: Board) -> Board:
    await board.ready()
    return board


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    if not HAVE_CHROMIUM:
        pytest.fail("Debian's chromium is not installed: bash scripts/browser (as root) installs it")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        await launched.close()


def alert(model: type[Any], account: str, day: date = date(2026, 11, 20), **fields: Any) -> Any:
    return model(
        message_id=uuid.uuid4(),
        account_id=account,
        occurred_at=datetime(day.year, day.month, day.day, 9, tzinfo=UTC),
        **fields,
    )


def reached(account: str, percent: int, accrued: str, cycle: date = NOV, day: date = date(2026, 11, 20)) -> Any:
    return alert(
        m.CallingCreditThresholdReached,
        account,
        day,
        threshold_percent=percent,
        accrued=Decimal(accrued),
        cap=Decimal("250.00"),
        cycle_start=cycle,
    )


def blocked(account: str) -> Any:
    return alert(m.CallingBlocked, account, accrued=Decimal("250.00"), cap=Decimal("250.00"), cycle_start=NOV)


def listed(account: str, key: str) -> Any:
    return lambda now: any(s["account_id"] == account for s in now[key])


async def test_an_alert_shows_live_on_the_page_and_is_still_there_after_the_board_restarts(
    stack: Bus, ready_board: Board, browser: Any
) -> None:
    from playwright.async_api import expect

    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await page.goto(ready_board.url)
    await expect(page.locator("#live")).to_have_text("live", timeout=10_000)
    warm_up = new_account()  # the first alert through a just-started board and page pays for first calls
    await stack.send(ALERTS, reached(warm_up, 50, "125.00"))
    await page.locator(f'#feed li[data-account="{warm_up}"]').wait_for(timeout=30_000)
    account = new_account()

    await stack.send(ALERTS, reached(account, 100, "250.00"))
    sent_ms = time.time() * 1000  # the page stamps with the same clock (Date.now()) what it shows
    await stack.send(ALERTS, blocked(account))
    in_feed = page.locator(f'#feed li[data-account="{account}"]')
    in_blocked = page.locator(f'#blocked tbody tr[data-account="{account}"]')
    await in_feed.nth(1).wait_for(timeout=10_000)
    await in_blocked.wait_for(timeout=10_000)
    feed_s = (int(await in_feed.first.get_attribute("data-received-at") or 0) - sent_ms) / 1000
    blocked_s = (int(await in_blocked.get_attribute("data-shown-at") or 0) - sent_ms) / 1000
    print(f"published -> in the feed {feed_s:.2f} s, in the blocked list {blocked_s:.2f} s")
    assert 0 < feed_s < 2.0 and 0 < blocked_s < 2.0, f"feed {feed_s:.2f} s, blocked list {blocked_s:.2f} s"
    assert await page.locator(f'#feed li[data-account="{account}"]').count() == 2

    ready_board.stop()
    await expect(page.locator("#live")).to_have_text("reconnecting…", timeout=10_000)
    ready_board.start()
    await ready_board.ready()
    await expect(page.locator("#live")).to_have_text("live", timeout=30_000)  # reconnected by itself
    assert await page.locator("#blocked tbody").get_by_text(account).count() == 1
    refused = alert(
        m.CommandRejected,
        account,
        causation_id=uuid.uuid4(),
        command_type="SetCallingCreditCap",
        reason_code="not_authorized",
        reason="only support or sales may change the calling-credit cap",
    )
    await stack.send(ALERTS, refused)  # the restarted board's live feed reaches the open page
    await page.locator("#feed li", has_text="cap change refused").first.wait_for(timeout=5_000)

    await page.reload()
    await page.locator("#blocked tbody").get_by_text(account).wait_for(timeout=5_000)
    assert await page.locator(f'#feed li[data-account="{account}"]').count() == 3
    await page.locator("#q").fill(account)
    await page.locator("#search button").click()
    await page.locator("#history li").first.wait_for(timeout=5_000)
    assert "BLOCKED" in await page.locator("#account-standing").inner_text()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)


async def test_a_redelivered_alert_is_recorded_once(stack: Bus, ready_board: Board) -> None:
    account = new_account()
    first = reached(account, 80, "200.00")
    await stack.send(ALERTS, first)
    await stack.send(ALERTS, first)  # the same message again, as after a relay crash
    await stack.send(ALERTS, blocked(account))  # processed after both: the repeat has been seen

    now = await ready_board.wait_for("/api/now", listed(account, "blocked"))
    history = await ready_board.get(f"/api/accounts/{account}")

    kinds = [a["kind"] for cycle in history["cycles"] for a in cycle["alerts"]]
    assert kinds == ["blocked", "threshold"]
    [standing] = [s for s in now["blocked"] if s["account_id"] == account]
    assert standing["accrued"] == "250.00" and standing["cap"] == "250.00" and standing["cycle_start"] == "2026-11-01"


async def test_near_cap_accounts_are_listed_and_a_closed_cycle_starts_them_afresh(
    stack: Bus, ready_board: Board
) -> None:
    account = new_account()
    await stack.send(ALERTS, reached(account, 50, "125.00"))
    await stack.send(ALERTS, reached(account, 80, "200.00"))
    now = await ready_board.wait_for("/api/now", listed(account, "near_cap"))
    [standing] = [s for s in now["near_cap"] if s["account_id"] == account]
    assert standing["threshold_percent"] == 80 and standing["accrued"] == "200.00"

    closed = alert(
        m.BillingCycleClosed,
        account,
        DEC,
        causation_id=uuid.uuid4(),
        cycle_start=NOV,
        cycle_end=DEC,
        next_cycle_start=DEC,
        next_cycle_end=date(2027, 1, 1),
    )
    await stack.send("billing.cycles", closed)
    await ready_board.wait_for(f"/api/accounts/{account}", lambda a: a["standing"]["cycle_start"] == "2026-12-01")
    assert not listed(account, "near_cap")(await ready_board.get("/api/now"))

    await stack.send(ALERTS, reached(account, 50, "125.00", cycle=DEC, day=date(2026, 12, 12)))
    history = await ready_board.wait_for(f"/api/accounts/{account}", lambda a: len(a["cycles"]) == 2)
    assert [c["cycle_start"] for c in history["cycles"]] == ["2026-12-01", "2026-11-01"]
    assert [len(c["alerts"]) for c in history["cycles"]] == [1, 2]
    found = await ready_board.get(f"/api/accounts?q={account[5:12]}")
    assert account in found["accounts"]
