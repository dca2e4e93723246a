"""The calls ledger by month over the real stack: a month whose every cycle is sealed is archived
(its partition detached) while every call stays charged once, ever, and the meters and invoices
stay as they were; a late call for an archived month is charged once and billed on the next invoice."""

from __future__ import annotations

import json
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from contracts import messages as m
from services.usage_metering.domain import in_usd
from services.usage_metering.partitions import next_month, partition_name
from tests import support
from tests.e2e.test_billing_cli import billing
from tests.e2e.test_usage_metering import _memory, _metering, _records, _reported_again
from tests.support import SCHEDULER, Bus, message, rows, scalar, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]
INVOICES = "billing.invoices"


async def unused_month(dbs) -> date:
    """A month long past, before anything the ledger knows (accounts' open cycles, charged calls,
    archived months; the other tests' are in 2026): this test's alone, however often it runs on
    one database."""
    earliest = await scalar(
        dbs["usage_metering"],
        "select least((select min(open_cycle_start) from accounts), (select min(cycle_start) from call_ids), "
        "(select min(month) from call_archives), date '2020-01-01')",
    )
    months = earliest.year * 12 + earliest.month - 1 - 3  # three months before: the test uses three
    return date(months // 12, months % 12 + 1, 1)


def call(account: str, day: date, call_id: str, cost: str) -> m.CallCharged:
    return message(m.CallCharged, account, day, call_id=call_id, cost=Decimal(cost))


async def charged(dbs, account: str) -> set[str]:
    found = await rows(dbs["usage_metering"], "select call_id from call_ids where account_id = :a", a=account)
    return {r[0] for r in found}


async def meter(dbs, account: str, cycle_start: date) -> tuple[Any, ...]:
    [row] = await rows(
        dbs["usage_metering"],
        "select billable, over_cap, late_unbilled, alerted, blocked from meters "
        "where account_id = :a and cycle_start = :s",
        a=account,
        s=cycle_start,
    )
    return tuple(row)


async def close(bus: Bus, account: str, as_of: date, cycle_start: date) -> dict[str, Any]:
    trigger = message(m.CloseBillingCycles, "platform", as_of, actor=SCHEDULER, as_of=as_of, account_ids=[account])
    await bus.send("billing.commands", trigger)
    [issued] = await bus.wait_count(INVOICES, 1, timeout=90, account_id=account, cycle_start=str(cycle_start))
    return issued


async def archive(*args: str) -> dict[str, Any]:
    code, out, err = await billing("calls", "archive", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def outcome(done: dict[str, Any], month: date) -> dict[str, Any]:
    [found] = [m for m in done["months"] if m["month"] == month.isoformat()]
    return found


def calling_lines(invoice: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return sorted(
        (line["period_start"], line["amount"], line["late"])
        for line in invoice["lines"]
        if line["kind"] == "calling_credits"
    )


async def test_a_sealed_month_is_archived_and_its_calls_stay_charged_once_with_meters_and_invoices_unchanged(
    stack: Bus, dbs
) -> None:
    um = dbs["usage_metering"]
    month = await unused_month(dbs)
    month1, month2 = next_month(month), next_month(next_month(month))
    ann, bob = await support.open_account(stack, month, 1), await support.open_account(stack, month, 1)
    for sent in (
        call(ann, month.replace(day=5), "a1", "10.00"),
        call(ann, month.replace(day=6), "a2", "20.00"),
        call(ann, month.replace(day=7), "a3", "30.00"),
        call(bob, month.replace(day=8), "b1", "5.00"),
        call(ann, month1.replace(day=3), "a4", "7.00"),
    ):
        await stack.send("usage.calls", sent)
    await wait_until(lambda: _has(charged(dbs, ann), {"a1", "a2", "a3", "a4"}), what="ann's calls to be charged")
    await wait_until(lambda: _has(charged(dbs, bob), {"b1"}), what="bob's call to be charged")

    # Both accounts' cycles of the month are open: nothing to archive, in a dry run or not.
    planned = await archive("--before", str(month1), "--dry-run")
    assert outcome(planned, month)["open_cycles"] >= 2 and planned["archived"] == []
    first_invoice = await close(stack, ann, month1, month)
    assert calling_lines(first_invoice) == [(str(month), "60.00", False)]
    kept = await archive("--before", str(month1))
    assert outcome(kept, month)["open_cycles"] == 1 and kept["archived"] == []  # bob's cycle is still open

    await close(stack, bob, month1, month)
    await stack.send("usage.calls", call(ann, month.replace(day=20), "a5", "3.00"))  # late, before the archive
    await wait_until(lambda: _has(charged(dbs, ann), {"a5"}), what="the late call to be charged")
    before = {key: await meter(dbs, *key) for key in ((ann, month), (bob, month), (ann, month1))}
    assert before[(ann, month)][:3] == (Decimal("63.00"), Decimal("0"), Decimal("3.00"))

    done = await archive("--before", str(month2))
    name = partition_name(month)
    assert [a["month"] for a in done["archived"]] == [month.isoformat()]
    assert done["archived"][0]["partition"] == name and done["archived"][0]["calls"] == 5
    assert outcome(done, month1)["open_cycles"] >= 2  # both accounts' next cycles are open: kept
    attached = await scalar(
        um,
        "select count(*) from pg_inherits where inhparent = 'calls'::regclass and inhrelid = to_regclass(:n)",
        n=name,
    )
    assert attached == 0
    assert await scalar(um, f"select count(*) from {name}") == 5  # the month's calls, kept for a dump
    assert {key: await meter(dbs, *key) for key in before} == before  # the snapshots hold all their calls
    code, out, _ = await billing("calls", "archived", "--json")
    assert code == 0 and [a["calls"] for a in json.loads(out) if a["month"] == month.isoformat()] == [5]

    # Another process, which remembers no call (recent calls 0): a call of the archived month
    # reported again under a new message id is not charged, whether its meter is read from the
    # database (the lookup of the batch's calls) or held in memory (the COPY meets call_ids' key).
    other = _metering(recent_calls=0)(dbs)
    a1 = call(ann, month.replace(day=5), "a1", "10.00")
    await other.process(_records(ann, [_reported_again(a1)]))
    await other.process(_records(ann, [call(ann, month.replace(day=21), "a6", "4.00")]))  # late: charged
    await other.process(_records(ann, [_reported_again(call(ann, month.replace(day=6), "a2", "20.00"))]))
    assert await charged(dbs, ann) == {"a1", "a2", "a3", "a4", "a5", "a6"}
    landed = await rows(
        um, "select call_id from calls_default where account_id = :a and cycle_start = :s", a=ann, s=month
    )
    assert [r[0] for r in landed] == ["a6"]  # an archived month gets no partition again
    assert (await meter(dbs, ann, month))[:3] == (Decimal("67.00"), Decimal("0"), Decimal("7.00"))

    # Through the running worker too: a redelivery, then a call of the open cycle behind it.
    await stack.send("usage.calls", _reported_again(call(ann, month.replace(day=7), "a3", "30.00")))
    await stack.send("usage.calls", call(ann, month1.replace(day=9), "a7", "1.00"))
    await wait_until(lambda: _has(charged(dbs, ann), {"a7"}), what="the call after the redelivery to be charged")
    assert (await meter(dbs, ann, month))[:3] == (Decimal("67.00"), Decimal("0"), Decimal("7.00"))

    # The next invoice bills the late calls of the archived month once: 3.00 + 4.00.
    second_invoice = await close(stack, ann, month2, month1)
    assert calling_lines(second_invoice) == [(str(month), "7.00", True), (str(month1), "8.00", False)]
    assert await scalar(um, "select count(*) from call_ids where account_id = :a", a=ann) == 7


async def _has(found: Any, wanted: set[str]) -> bool:
    return wanted <= await found


async def test_a_call_is_charged_once_whatever_month_it_comes_dated_in(stack: Bus, dbs) -> None:
    """The key that says a call was charged holds across months (partitions): the same call reported
    again dated in the next cycle, whose meter the process holds in memory, is not charged there."""
    account = await support.open_account(stack, date(2026, 11, 1), 1)
    processor = _metering(recent_calls=0)(dbs)
    first = call(account, date(2026, 11, 30), f"edge-{uuid.uuid4().hex[:6]}", "2.00")
    await processor.process(_records(account, [first]))
    await processor.process(_records(account, [call(account, date(2026, 12, 1), "next", "1.00")]))
    again = first.model_copy(update={"message_id": uuid.uuid4(), "occurred_at": support.at(date(2026, 12, 1))})
    await processor.process(_records(account, [again]))
    found = await rows(
        dbs["usage_metering"], "select call_id, cycle_start from calls where account_id = :a order by 2", a=account
    )
    assert [(r[0], r[1]) for r in found] == [(first.call_id, date(2026, 11, 1)), ("next", date(2026, 12, 1))]
    assert (await meter(dbs, account, date(2026, 12, 1)))[0] == Decimal("1.00")


async def test_a_call_folded_into_a_place_another_call_took_meanwhile_is_charged_after_it(stack: Bus, dbs) -> None:
    """The ledger's key is a meter's calls in order: a process whose memory of a meter is behind
    the database (another process charged it meanwhile, with another call) cannot write its call
    into the place taken; its batch is retried on the meter as it stands, and each call counts once."""
    nov_1, nov_10 = date(2026, 11, 1), date(2026, 11, 10)
    account = await support.open_account(stack, nov_1, 1)
    behind, other = _metering(recent_calls=1000)(dbs), _metering(recent_calls=1000)(dbs)
    await behind.process(_records(account, [call(account, nov_10, "p1", "1.00")]))  # holds the meter: place 1
    await other.process(_records(account, [call(account, nov_10, "p2", "2.00")]))  # read from the database: place 2
    await behind.process(_records(account, [call(account, nov_10, "p3", "4.00")]))  # folded at place 2, refused
    found = await rows(
        dbs["usage_metering"], "select call_id, seq from calls where account_id = :a order by 2", a=account
    )
    assert [(r[0], r[1]) for r in found] == [("p1", 1), ("p2", 2), ("p3", 3)]
    assert (await meter(dbs, account, nov_1))[0] == Decimal("7.00")
    held = _memory(behind).get(account, 0, nov_1)
    assert held is not None and (in_usd(held.meter).billable, held.position) == (Decimal("7.00"), 3)
