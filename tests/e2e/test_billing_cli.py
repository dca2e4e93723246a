"""The ``billing`` command as an operator runs it: a process of its own against the running services."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts import Actor
from contracts import messages as m
from deploy.credentials import env_for
from tests import support
from tests.conftest import Workers, free_port
from tests.support import ADMIN, SERVICE, Bus, message, scalar, wait_until

pytestmark = [
    pytest.mark.stack,
    pytest.mark.timeout(900),
]  # each `billing` is a process of its own: seconds on a busy machine
BILLING = str(Path(sys.executable).with_name("billing"))  # the console script the project installs


def operator_env() -> dict[str, str]:
    return {**os.environ, **env_for("operator")}  # as the operators' principal


async def billing(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``billing ARGS``; its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        BILLING, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=operator_env()
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def billing_json(*args: str) -> Any:
    code, out, err = await billing(*args, "--json")
    assert code == 0, err
    return json.loads(out)


async def licensing(
    bus: Bus, model: type[m.Command], account: str, day: date, actor: Any = ADMIN, **fields: Any
) -> None:
    sent = message(model, account, day, actor=actor, **fields)
    await bus.send("licensing.commands", sent)
    [reply] = await bus.wait_count("licensing.events", 1, causation_id=str(sent.message_id))
    assert reply["type"] != "CommandRejected", reply


async def test_account_shows_what_the_services_hold_after_a_purchase_an_assignment_and_calls(stack: Bus, dbs) -> None:
    account = await support.open_account(stack)
    await licensing(stack, m.PurchaseLicenses, account, date(2026, 11, 10), product="user", quantity=3)
    await licensing(
        stack, m.AssignLicense, account, date(2026, 11, 11), actor=SERVICE, product="user", assignee_id="ann"
    )
    await licensing(stack, m.RemoveLicenses, account, date(2026, 11, 12), product="user", quantity=1)
    for n, cost in enumerate(("100.00", "30.50")):
        await stack.send(
            "usage.calls", message(m.CallCharged, account, date(2026, 11, 20), call_id=f"c{n}", cost=Decimal(cost))
        )
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) = 2 from calls where account_id = :a", a=account),
        what="metering to record both calls",
    )

    shown = await billing_json("account", account)

    user = next(p for p in shown["licenses"]["products"] if p["product"] == "user")
    assert (user["purchased"], user["assigned"], user["scheduled_for_removal"], user["available"]) == (3, 1, 1, 1)
    usage = shown["calling_credits"]
    assert (usage["cap"], usage["accrued"], usage["blocked"], usage["thresholds_reached"]) == (
        "250.00",
        "130.500000",
        False,
        [50],
    )
    assert (usage["cycle_start"], usage["cycle_end"]) == ("2026-11-01", "2026-12-01")
    assert shown["invoices"] == []
    code, table, _ = await billing("account", account)
    assert code == 0 and "accrued 130.500000 of cap 250.00 USD" in table and "calling allowed" in table, table


async def test_close_cycles_prints_a_progress_line_and_its_summary_and_invoices_show_the_lines(stack: Bus, dbs) -> None:
    accounts = [await support.open_account(stack) for _ in range(3)]
    for account in accounts:
        await licensing(stack, m.PurchaseLicenses, account, date(2026, 11, 16), product="user", quantity=2)
    accounts_args = [arg for account in accounts for arg in ("--account", account)]

    code, printed, err = await billing("close-cycles", "--as-of", "2026-12-01", *accounts_args, "--timeout", "90")

    billed = await scalar(dbs["cycle_close"], "select sum(total) from invoices where account_id = any(:a)", a=accounts)
    assert code == 0, printed + err
    assert "/3 invoices issued" in printed and "3/3 invoices issued" in printed, printed
    assert f"accounts closed 3, invoices issued 3, total billed {billed} USD" in printed, printed
    [last] = (await billing_json("account", accounts[0]))["invoices"]
    assert (last["cycle_start"], last["total"]) == ("2026-11-01", "45.00")  # 15.00 prorated + 30.00 in advance
    issued = await billing_json("invoice", last["invoice_id"])
    assert sorted((line["kind"], line["amount"]) for line in issued["lines"]) == [
        ("proration", "15.00"),
        ("recurring", "30.00"),
    ]
    assert [v["invoice_id"] for v in await billing_json("invoices", "--account", accounts[0])] == [last["invoice_id"]]


async def test_alerts_tail_follows_the_alerts_of_one_account_live(stack: Bus) -> None:
    account = await support.open_account(stack)
    other = await support.open_account(stack)
    tail = await asyncio.create_subprocess_exec(
        BILLING, "alerts", "tail", "--account", account, "--limit", "2", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=operator_env(),
    )  # fmt: skip
    try:
        assert tail.stderr is not None
        assert b"following" in await asyncio.wait_for(tail.stderr.readline(), 120)  # positions taken: nothing missed

        for who in (other, account):
            await stack.send(
                "usage.calls", message(m.CallCharged, who, date(2026, 11, 20), call_id="big", cost=Decimal("210.00"))
            )
        out, _ = await asyncio.wait_for(tail.communicate(), 120)
    finally:
        if tail.returncode is None:  # the test failed: leave no tail behind
            tail.kill()
            await tail.wait()

    alerts = [json.loads(line) for line in out.decode().splitlines()]
    assert tail.returncode == 0
    assert [(a["account_id"], a["type"], a.get("threshold_percent")) for a in alerts] == [
        (account, "CallingCreditThresholdReached", 50),
        (account, "CallingCreditThresholdReached", 80),
    ]


async def test_what_is_not_there_exits_1_and_bad_usage_exits_2(stack: Bus) -> None:
    assert (await billing("account", "nobody-at-all"))[0] == 1
    assert (await billing("invoice", "00000000-0000-0000-0000-000000000000"))[0] == 1
    assert (await billing("invoice", "not-an-id"))[0] == 2
    assert (await billing("prices", "no_such_product", "1.00"))[0] == 1
    assert (await billing("close-cycles"))[0] == 2  # --as-of is required


async def dead_letters_of(account: str) -> list[dict[str, Any]]:
    return [d for d in await billing_json("dlq", "list", "usage.calls") if d["account_id"] == account]


async def test_dlq_replay_of_a_poison_message_fixed_by_hand_republishes_it_once_and_it_is_processed(
    stack: Bus, dbs, tmp_path: Path
) -> None:
    account = await support.open_account(stack)
    poison = message(m.CallCharged, account, date(2026, 11, 20), call_id="c-1", cost=Decimal("5.00"))
    sent = json.loads(poison.model_dump_json())
    await stack.send("usage.calls", json.dumps(sent | {"cost": "-5.00"}).encode(), key=account)  # the producer's bug
    [first] = await wait_until(lambda: dead_letters_of(account), what="the poison call's dead letter")
    assert "cost" in first["error"] and first["replays"] == 0

    # Re-driven as it is, it fails again: one new dead letter, known as a re-drive of the first.
    code, out, err = await billing("dlq", "replay", first["ref"], "--actor", "ops-ann")
    assert code == 0 and f"re-drove {first['ref']}" in out, out + err
    again = await wait_until(lambda: _second(account), what="the second failure")
    assert again["redrive_of"] == first["ref"] and again["replays"] == 0

    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(sent))  # the operator corrects the cost by hand
    code, out, err = await billing("dlq", "replay", again["ref"], "--payload", str(fixed), "--actor", "ops-ann")
    assert code == 0, out + err
    await wait_until(
        lambda: scalar(
            dbs["usage_metering"], "select cost from calls where account_id = :a and call_id = 'c-1'", a=account
        ),
        what="the fixed call to be metered",
    )
    assert (await billing_json("account", account))["calling_credits"]["accrued"] == "5.000000"

    code, out, err = await billing("dlq", "replay", again["ref"])
    assert code == 1 and "refused" in out and "--again" in out, out + err
    shown = await billing_json("dlq", "show", again["ref"])
    assert [(r["replayed_by"], r["amended"]) for r in shown["replay_log"]] == [("ops-ann", True)]
    assert len(await dead_letters_of(account)) == 2  # the fixed call came after both failures: nothing looped


async def _second(account: str) -> dict[str, Any] | None:
    found = await dead_letters_of(account)
    return found[0] if len(found) == 2 else None


async def test_dlq_covers_the_alert_boards_dead_letters_replayed_once_after_the_fix(
    stack: Bus, workers: Workers, tmp_path: Path
) -> None:
    board = support.database("alert_board")
    workers.start("alert_board", name="alert_board_for_dlq", BILLING_BOARD_PORT=str(free_port()))
    try:
        account = support.new_account()
        alert = m.CallingCreditThresholdReached(
            message_id=uuid.uuid4(),
            account_id=account,
            occurred_at=datetime(2026, 11, 20, 9, tzinfo=UTC),
            threshold_percent=80,
            accrued=Decimal("200.00"),
            cap=Decimal("250.00"),
            cycle_start=date(2026, 11, 1),
        )
        sent = json.loads(alert.model_dump_json())
        poison = json.dumps(sent | {"threshold_percent": "eighty"}).encode()  # the producer's bug
        await stack.send("metering.alerts", poison, key=account)

        async def board_letters() -> list[dict[str, Any]]:
            listed = await billing_json("dlq", "list", "metering.alerts")
            return [d for d in listed if d["account_id"] == account]

        [letter] = await wait_until(board_letters, timeout=120, what="the board's dead letter of the poison alert")
        assert letter["service"] == "alert_board" and letter["ref"].startswith("alert_board-")
        assert "threshold_percent" in letter["error"] and letter["replays"] == 0

        fixed = tmp_path / "fixed.json"
        fixed.write_text(json.dumps(sent))  # the operator corrects it by hand
        code, out, err = await billing("dlq", "replay", letter["ref"], "--payload", str(fixed), "--actor", "ops-bo")
        assert code == 0 and f"re-drove {letter['ref']}" in out, out + err
        recorded = "select count(*) from alerts where account_id = :a"
        await wait_until(lambda: scalar(board, recorded, a=account), what="the board to record the fixed alert")

        code, out, err = await billing("dlq", "replay", letter["ref"])
        assert code == 1 and "refused" in out and "--again" in out, out + err
        shown = await billing_json("dlq", "show", letter["ref"])
        assert [(r["replayed_by"], r["amended"]) for r in shown["replay_log"]] == [("ops-bo", True)]
        assert await scalar(board, recorded, a=account) == 1  # re-driven once, recorded once
        assert len(await board_letters()) == 1  # the fix was processed: no new dead letter
    finally:
        workers.stop("alert_board_for_dlq")
        await board.dispose()


async def test_close_cycles_claiming_a_role_its_key_may_not_claim_is_refused_with_the_reason_and_closes_nothing(
    stack: Bus, dbs
) -> None:
    account = await support.open_account(stack)
    # The operators' key may claim operator only; service is the scheduler's (its cron job).
    code, printed, err = await billing(
        "close-cycles", "--as-of", "2026-12-01", "--account", account, "--role", "service", "--timeout", "90"
    )
    assert code == 1, printed + err
    assert "refused (not_authorized): key 'operator' may not claim role 'service'" in err, printed + err
    closes = await scalar(dbs["cycle_close"], "select count(*) from cycle_closes where account_id = :a", a=account)
    assert closes == 0


async def dead_letters_on(topic: str, account: str) -> list[dict[str, Any]]:
    return [d for d in await billing_json("dlq", "list", topic) if d["account_id"] == account]


async def test_a_dead_lettered_command_is_re_driven_signed_by_the_operator_only_for_a_role_it_may_claim(
    stack: Bus, dbs, tmp_path: Path
) -> None:
    account = await support.open_account(stack)
    day = date(2026, 12, 1)
    # Two commands whose envelope cannot be read (no message_id): each becomes a dead letter.
    for topic, kind in (("billing.commands", "CloseBillingCycles"), ("licensing.commands", "PurchaseLicenses")):
        await stack.send(topic, json.dumps({"account_id": account, "type": kind}).encode(), key=account)
    [trigger_letter] = await wait_until(lambda: dead_letters_on("billing.commands", account), what="the dead trigger")
    [purchase_letter] = await wait_until(lambda: dead_letters_on("licensing.commands", account), what="the purchase")

    # A purchase claims office_admin: an operator may not send it in the admin's name.
    purchase = message(m.PurchaseLicenses, account, day, actor=ADMIN, product="user", quantity=1)
    fixed = tmp_path / "purchase.json"
    fixed.write_text(purchase.model_dump_json())
    code, out, err = await billing("dlq", "replay", purchase_letter["ref"], "--payload", str(fixed))
    assert code == 1 and "refused" in out and "'office_admin'" in out, out + err
    assert (await billing_json("dlq", "show", purchase_letter["ref"]))["replay_log"] == []

    # A trigger claiming operator: signed with the operators' key, cycle close believes it.
    trigger = message(
        m.CloseBillingCycles, account, day, actor=Actor(id="ops-ann", role="operator"), as_of=day, account_ids=[account]
    )
    fixed.write_text(trigger.model_dump_json())
    code, out, err = await billing(
        "dlq", "replay", trigger_letter["ref"], "--payload", str(fixed), "--actor", "ops-ann"
    )
    assert code == 0, out + err
    invoiced = await wait_until(
        lambda: scalar(dbs["cycle_close"], "select count(*) from invoices where account_id = :a", a=account),
        timeout=90,
        what="the re-driven trigger's invoice",
    )
    assert invoiced == 1
