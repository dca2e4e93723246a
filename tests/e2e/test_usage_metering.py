"""Usage metering over the real broker and database: cap alerts, blocking, cap changes, bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from decimal import Decimal

import pytest

from contracts import messages as m
from services.usage_metering.domain import in_usd
from tests import support
from tests.support import ADMIN, SUPPORT, Bus, message, new_account, scalar, wait_until

pytestmark = pytest.mark.stack
ALERTS = "metering.alerts"
NOV_1, NOV_10 = date(2026, 11, 1), date(2026, 11, 10)


async def open_account(bus: Bus) -> str:
    return await support.open_account(bus, NOV_1, 1)


def call(account: str, cost: str, call_id: str | None = None, day: date = NOV_10) -> m.CallCharged:
    return message(m.CallCharged, account, day, call_id=call_id or uuid.uuid4().hex, cost=Decimal(cost))


async def accrued(dbs, account: str) -> Decimal:
    return await scalar(
        dbs["usage_metering"],
        "select billable from meters where account_id = :a and cycle_start = '2026-11-01'",
        a=account,
    )


async def test_reaching_the_cap_alerts_once_per_threshold_and_blocks(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    calls = [call(account, "10.00") for _ in range(25)]
    for c in calls[:7]:
        await stack.send("usage.calls", c)
    await stack.send("usage.calls", calls[3])  # the telephony platform reports one call twice
    for c in calls[7:]:
        await stack.send("usage.calls", c)

    await stack.wait_count(ALERTS, 1, account_id=account, type="CallingBlocked")
    last = call(account, "10.00")
    await stack.send("usage.calls", last)  # over the cap: recorded as over-cap, not billed
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) from calls where call_id = :c", c=last.call_id),
        what="the over-cap call to be recorded",
    )

    thresholds = [
        a["threshold_percent"] for a in stack.matching(ALERTS, account_id=account, type="CallingCreditThresholdReached")
    ]
    assert thresholds == [50, 80, 100]
    assert len(stack.matching(ALERTS, account_id=account, type="CallingBlocked")) == 1
    assert await accrued(dbs, account) == Decimal("250.00")
    over = await scalar(dbs["usage_metering"], "select over_cap from meters where account_id = :a", a=account)
    assert over == Decimal("10.00")
    fifty = stack.matching(ALERTS, account_id=account, threshold_percent=50)[0]
    assert Decimal(fifty["accrued"]) == Decimal("130.00") and fifty["cap"] == "250.00"


async def test_support_raising_the_cap_unblocks_and_rearms_the_thresholds_ahead(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    for _ in range(25):
        await stack.send("usage.calls", call(account, "10.00"))
    await stack.wait_count(ALERTS, 1, account_id=account, type="CallingBlocked")

    raise_cap = message(m.SetCallingCreditCap, account, date(2026, 11, 12), actor=SUPPORT, cap=Decimal("400.00"))
    await stack.send("metering.commands", raise_cap)
    [unblocked] = await stack.wait_count(ALERTS, 1, account_id=account, type="CallingUnblocked")
    [changed] = await stack.wait_count(ALERTS, 1, account_id=account, type="CallingCreditCapChanged")
    for _ in range(7):  # 250 + 70 = 320 = 80 % of 400
        await stack.send("usage.calls", call(account, "10.00", day=date(2026, 11, 13)))
    await stack.wait_count(ALERTS, 2, account_id=account, threshold_percent=80)

    assert unblocked["reason"] == "cap_raised"
    assert changed["cap"] == "400.00" and Decimal(changed["accrued"]) == Decimal("250")
    assert len(stack.matching(ALERTS, account_id=account, threshold_percent=50)) == 1
    assert len(stack.matching(ALERTS, account_id=account, threshold_percent=100)) == 1
    assert await accrued(dbs, account) == Decimal("320.00")


async def test_an_office_admin_may_not_change_the_cap(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    attempt = message(m.SetCallingCreditCap, account, NOV_10, actor=ADMIN, cap=Decimal("1000.00"))
    await stack.send("metering.commands", attempt)
    [rejected] = await stack.wait_count(ALERTS, 1, causation_id=str(attempt.message_id))

    assert rejected["type"] == "CommandRejected" and rejected["reason_code"] == "not_authorized"
    assert await scalar(dbs["usage_metering"], "select cap from accounts where account_id = :a", a=account) == Decimal(
        "250.00"
    )


async def test_garbage_and_a_negative_cost_go_to_the_dlq_and_later_calls_still_accrue(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    negative = call(account, "1.00").model_dump_json().replace('"cost":"1.00"', '"cost":"-5.00"').encode()
    absurd = call(account, "1.00").model_dump_json().replace('"cost":"1.00"', '"cost":"20000.00"').encode()
    await stack.send("usage.calls", b"\x00not json at all", key=account)
    await stack.send("usage.calls", negative, key=account)
    await stack.send("usage.calls", absurd, key=account)
    await stack.send("usage.calls", call(account, "12.50"))
    await stack.send("usage.calls", call(account, "0.125000"))

    await wait_until(lambda: accrued(dbs, account), what="the valid calls to accrue")
    await wait_until(lambda: _equals(accrued(dbs, account), Decimal("12.625")), what="both valid calls to accrue")
    letters = await stack.wait_count("usage.calls.dlq", 3, key=account)
    errors = [letter["error"] for letter in letters]
    assert any("not JSON" in e for e in errors)
    assert any("negative" in e for e in errors)
    assert any("not plausible" in e for e in errors)
    garbage = next(letter for letter in letters if "not JSON" in letter["error"])
    assert garbage["original_topic"] == "usage.calls" and garbage["offset"] >= 0
    assert garbage["value_text"] == "\x00not json at all" and garbage["consumer"] == "usage-metering"


async def _equals(value, expected):
    return (await value) == expected


async def test_calls_that_arrive_before_their_account_opens_are_kept_and_accrued_when_it_opens(stack: Bus, dbs) -> None:
    account = new_account()
    for n in range(3):
        await stack.send("usage.calls", call(account, "2.50", call_id=f"early-{n}"))
    await wait_until(
        lambda: scalar(dbs["usage_metering"], "select count(*) = 3 from parked where account_id = :a", a=account),
        what="the early calls to be parked",
    )
    await stack.send("platform.accounts", message(m.AccountOpened, account, NOV_1, billing_day=1))

    await wait_until(lambda: _equals(accrued(dbs, account), Decimal("7.50")), what="the parked calls to accrue")
    assert await scalar(dbs["usage_metering"], "select count(*) from parked where account_id = :a", a=account) == 0


@pytest.mark.parametrize("first_to_commit", ["stale-owner", "new-owner"])
async def test_two_replicas_folding_one_meter_during_a_rebalance_lose_nothing_and_alert_once(
    stack: Bus, dbs, monkeypatch, first_to_commit: str
) -> None:
    """Two owners of a partition during a rebalance: the old one, its meter in memory, is still in
    a batch when the new one, which read the meter from the database, processes the same calls and
    more. Whichever records a call second meets the calls key: its batch drops those calls, reads
    the meter again from the database and folds the rest on it, so nothing is charged twice and
    each threshold alerts once."""
    from services.usage_metering.snapshots import MeterSnapshots
    from services.usage_metering.storage import MeterStore
    from shared.db import make_sessions

    account = await open_account(stack)
    earlier, in_flight, later = (
        [call(account, "10.00")],
        [call(account, "90.00"), call(account, "30.00")],
        [call(account, "140.00")],
    )
    stale, new = _metering(recent_calls=1000)(dbs), _metering(recent_calls=1000)(dbs)
    await stale.process(_records(account, earlier))  # the old owner holds the meter (10.00) in memory
    stale_memory = _memory(stale)
    folded, other_done = asyncio.Event(), asyncio.Event()
    original = MeterStore.record_calls

    async def hold(self: MeterStore, rows):
        first = self.memory is (stale_memory if first_to_commit == "new-owner" else _memory(new))
        if first and not folded.is_set():  # folded, not recorded yet: the other owner goes first
            folded.set()
            await other_done.wait()
        return await original(self, rows)

    async def other() -> None:
        await folded.wait()
        if first_to_commit == "new-owner":
            await new.process(_records(account, in_flight + later))
        else:
            await stale.process(_records(account, in_flight))
        other_done.set()

    monkeypatch.setattr(MeterStore, "record_calls", hold)
    if first_to_commit == "new-owner":
        await asyncio.gather(stale.process(_records(account, in_flight)), other())
    else:
        await asyncio.gather(new.process(_records(account, in_flight + later)), other())

    assert await accrued(dbs, account) == Decimal("250.00")
    over = await scalar(dbs["usage_metering"], "select over_cap from meters where account_id = :a", a=account)
    assert over == Decimal("20.00")  # 10 + 90 + 30 + 140 = 270: 250 billed, 20 over the cap
    assert await _calls_recorded(dbs, account) == 4
    await stack.wait_count(ALERTS, 1, account_id=account, type="CallingBlocked")
    thresholds = sorted(
        a["threshold_percent"] for a in stack.matching(ALERTS, account_id=account, type="CallingCreditThresholdReached")
    )
    assert thresholds == [50, 80, 100]
    held = _memory(new).get(account, 0, NOV_1)  # the new owner holds the meter as it stands
    assert (in_usd(held.meter).billable, in_usd(held.meter).over_cap, held.position) == (
        Decimal("250.00"),
        Decimal("20.00"),
        4,
    )
    # The new owner's snapshot goes first; the old owner's, behind it, is refused and forgotten.
    for processor in (new, stale):
        await MeterSnapshots(_memory(processor), make_sessions(dbs["usage_metering"]), 60).write()
    assert _memory(stale).get(account, 0, NOV_1) is None
    assert await _as_it_stands(dbs, account) == (Decimal("250.00"), Decimal("20.00"))
    snapshot = await scalar(
        dbs["usage_metering"], "select through_seq from meter_snapshots where account_id = :a", a=account
    )
    assert snapshot == 4


async def _shadowed(conn, table: str, rows: str) -> None:
    """A temporary table of ``table``'s shape that hides it for this transaction (dropped at commit),
    filled with ``rows`` and analysed: the plans then do not depend on the test database's data."""
    await conn.execute(f"create temporary table {table} (like {table} including all) on commit drop")
    await conn.execute(f"insert into pg_temp.{table} {rows}")
    await conn.execute(f"analyze pg_temp.{table}")


async def test_a_batch_reads_its_accounts_by_key_not_by_scanning_them_all(dbs) -> None:
    """A batch of calls reads the accounts it names. With the ids unpacked from JSON in a join,
    the planner (guessing 100 ids) hashed the whole accounts table for every batch, however
    small, up to tables of tens of thousands of accounts (~1.3 ms a batch at 14,000): each
    account must be a primary-key lookup, in the plan PostgreSQL picks for the first executions
    and in the one it caches after. On a table of that size (a temporary one of the same shape,
    so the test database's own accounts do not matter), rolled back."""
    import json

    from services.usage_metering.storage import ACCOUNTS_BY_ID
    from shared.db import driver_connection, make_sessions

    async with make_sessions(dbs["usage_metering"])() as session:
        conn = await driver_connection(session)
        await _shadowed(
            conn,
            "accounts",
            "select 'plan-' || i, 1, 250.00, date '2026-11-01', date '2026-12-01' from generate_series(1, 14000) i",
        )
        ids = ["plan-7", "plan-70", "plan-700"]
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"set local plan_cache_mode = {mode}")
            plan = json.dumps(await conn.fetchval("explain (format json) " + ACCOUNTS_BY_ID, ids))
            assert "Seq Scan" not in plan and "Index" in plan, (mode, plan)
            assert [r[0] for r in await conn.fetch(ACCOUNTS_BY_ID, ids)] == sorted(ids)
        await session.rollback()


async def test_a_batch_reads_its_meters_and_writes_their_snapshots_by_key_not_by_scanning_them_all(dbs) -> None:
    """Like the accounts: each of a batch's meters is a primary-key lookup when read (its snapshot,
    and its calls after it by the calls key: account, cycle, place) and each snapshot when written,
    in the first plans and the cached one. Joined with keys unpacked from JSON, the planner guessed
    100 keys and hashed the whole meters table up to ~15,000 meters (1.9 ms to read and 3.2 ms to
    write 60 meters in the benchmark's alert phase, instead of ~0.4 and ~0.6). On 10,000 accounts,
    meters and 50,000 calls, rolled back (``meters`` is a view: a temporary table cannot shadow
    what it reads). Only a partition of the calls ledger that holds next to nothing (a month
    ahead, the default one) may be scanned: the cheapest read of an almost empty table, and one
    that run-time pruning skips for any other month's meter."""
    import json

    from services.usage_metering.storage import METERS_BY_KEY, SAVE_SNAPSHOTS
    from shared.db import driver_connection, make_sessions

    async with make_sessions(dbs["usage_metering"])() as session:
        conn = await driver_connection(session)
        await conn.execute(
            "insert into accounts select 'plan-' || i, 1, 250.00, date '2026-11-01', date '2026-12-01', 0 "
            "from generate_series(1, 10000) i"
        )
        await conn.execute(
            "insert into meter_snapshots select 'plan-' || i, date '2026-11-01', date '2026-12-01', 250.00, "
            "i % 200, 0, 0, false, 0, 3 from generate_series(1, 10000) i"
        )
        await conn.execute(
            "insert into calls select 'plan-' || (i % 10000 + 1), 'c' || i, 1000000, date '2026-11-01', i / 10000 + 1, "
            "1000000, 0 "  # 1 USD each, in micro-dollars
            "from generate_series(0, 49999) i"
        )
        await conn.execute("analyze accounts, meter_snapshots, calls")
        keys = [["plan-7", "2026-11-01"], ["plan-70", "2026-11-01"], ["plan-700", "2026-11-01"]]
        written = [[a, s, "2026-12-01", "250.00", "1.50", "0", 0, False, "0", 9] for a, s in keys]
        sizes = {r["relname"]: r["reltuples"] for r in await conn.fetch("select relname, reltuples from pg_class")}
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"set local plan_cache_mode = {mode}")
            for statement, rows in ((METERS_BY_KEY, keys), (SAVE_SNAPSHOTS, written)):
                plan = await conn.fetchval("explain (format json) " + statement, json.dumps(rows))
                scans = _scans((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
                assert all(sizes[relation] < 1000 for node, relation in scans if node == "Seq Scan"), (mode, scans)
                if statement is METERS_BY_KEY:  # the partition that holds the calls, read through its key
                    big = [
                        node for node, relation in scans if relation.startswith("calls_") and sizes[relation] >= 1000
                    ]
                    assert big and set(big) <= {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}, (mode, scans)
        read = {r["account_id"]: r for r in await conn.fetch(METERS_BY_KEY, json.dumps(keys))}
        assert sorted(read) == [k[0] for k in keys]
        assert (read["plan-7"]["billable"], read["plan-7"]["through_seq"], read["plan-7"]["snapshot_seq"]) == (
            Decimal(7 + 2),  # the snapshot's 7 plus its calls 4 and 5 (1 to 3 are in the snapshot)
            5,
            3,
        )
        assert len(await conn.fetch(SAVE_SNAPSHOTS, json.dumps(written))) == 3  # from 3 to 9
        assert await conn.fetch(SAVE_SNAPSHOTS, json.dumps(written)) == []  # not forward any more
        await session.rollback()


def _scans(node: dict) -> list[tuple[str, str]]:
    """The (node type, relation) of every scan of a table in a plan."""
    found = [(node["Node Type"], node["Relation Name"])] if "Relation Name" in node else []
    for child in node.get("Plans", []):
        found += _scans(child)
    return found


async def test_a_meter_rebuilt_from_its_snapshot_and_its_calls_after_it_is_the_meter_the_fold_gave(dbs) -> None:
    """What a new owner reads after a crash or a rebalance (the view ``meters``: a snapshot plus the
    parts of its calls after it) is exactly what the fold held: amounts, thresholds alerted, the
    block, late usage, and how many calls it holds. Random meters with snapshots taken anywhere,
    some after a cap change, some of a cycle already sealed (late calls); rolled back."""
    import random

    from services.usage_metering import domain
    from services.usage_metering.storage import BITS
    from shared.db import driver_connection, make_sessions
    from shared.money import micro_dollars

    rng = random.Random(21)
    expected: dict[str, tuple] = {}
    accounts, snapshots, ledger = [], [], []
    for case in range(200):
        account = f"rebuilt-{uuid.uuid4().hex[:8]}-{case}"
        late = case % 5 == 0
        cycle_start = date(2026, 10, 1) if late else NOV_1
        meter = domain.Meter(cap=rng.choice([Decimal("0"), Decimal("10.00"), Decimal("37.50"), Decimal("250.00")]))
        costs = [Decimal(rng.randint(0, 60_000_000)) / 1_000_000 for _ in range(rng.randint(0, 16))]
        at = rng.randint(0, len(costs))  # the snapshot holds calls 1 to at
        parts: list[tuple[int, int]] = []  # micro-dollars
        for index, cost in enumerate(costs):
            if index == at and not late and rng.random() < 0.3:  # a cap change wrote the snapshot
                meter, _ = domain.change_cap(meter, rng.choice([Decimal("5.00"), Decimal("40.00"), Decimal("300.00")]))
            if index == at:
                snapshot = meter
            if late:
                folded, [part] = domain.accrue_late_calls(domain.in_micros(meter), [micro_dollars(cost)])
            else:
                folded, [part], _ = domain.accrue_calls(domain.in_micros(meter), [micro_dollars(cost)])
            meter = domain.in_usd(folded)
            parts.append(part)
        if at == len(costs):
            snapshot = meter
        accounts.append((account, 1, Decimal("250.00"), NOV_1, date(2026, 12, 1), 0))
        snapshots.append(
            (
                account,
                cycle_start,
                date(cycle_start.year, cycle_start.month + 1, 1),
                snapshot.cap,
                snapshot.billable,
                snapshot.over_cap,
                sum(BITS[p] for p in snapshot.alerted),
                snapshot.blocked,
                snapshot.late_unbilled,
                at,
            )
        )
        for seq, (cost, (billable, over)) in enumerate(zip(costs, parts, strict=True), start=1):
            ledger.append(
                (
                    account,
                    f"c{seq}",
                    micro_dollars(cost),
                    cycle_start,
                    seq,
                    billable,
                    over,
                )
            )
        bits = sum(BITS[p] for p in meter.alerted)
        expected[account] = (meter.billable, meter.over_cap, bits, meter.blocked, meter.late_unbilled, len(costs))

    async with make_sessions(dbs["usage_metering"])() as session:
        conn = await driver_connection(session)
        await conn.copy_records_to_table("accounts", records=accounts)
        await conn.copy_records_to_table("meter_snapshots", records=snapshots)
        await conn.copy_records_to_table(
            "calls",
            records=ledger,
            columns=("account_id", "call_id", "cost", "cycle_start", "seq", "billable", "over_cap"),
        )
        rebuilt = {
            r["account_id"]: tuple(r)[1:]
            for r in await conn.fetch(
                "select account_id, billable, over_cap, alerted, blocked, late_unbilled, through_seq from meters "
                "where account_id = any($1::text[])",
                list(expected),
            )
        }
        await session.rollback()
    assert rebuilt == expected


ACCOUNTS_IN_FULL_BATCH = 40  # a full batch's calls spread over them


async def test_a_full_batch_of_calls_is_handled_without_a_pass_of_the_garbage_collector(stack: Bus, dbs) -> None:
    """A batch's objects are freed by reference counting when it ends; a collector pass in the
    middle of it would only walk them (20-30 ms each, finding nothing) while the batch holds its
    transaction open. A performance guard: a full batch, from its records arriving to its commit,
    stays under half the service's young-generation threshold (the rest is for what a worker
    holds besides: aiokafka's prefetched records, FastStream's per-record dicts)."""
    import gc

    from services.usage_metering import handlers
    from services.usage_metering.settings import Settings
    from services.usage_metering.storage import MeterStore
    from shared.db import make_sessions
    from shared.runtime import BatchProcessor
    from shared.runtime.codec import Record

    settings = Settings()
    accounts = [await open_account(stack) for _ in range(ACCOUNTS_IN_FULL_BATCH)]
    processor = BatchProcessor(
        "usage-metering", make_sessions(dbs["usage_metering"]), handlers.registry, store=MeterStore, settings=settings
    )

    def records(calls: list[m.CallCharged]) -> list[Record]:
        return [
            Record("usage.calls", 0, i, c.account_id.encode(), c.model_dump_json().encode(), (), 1)
            for i, c in enumerate(calls)
        ]

    await processor.process(records([call(a, "0.01") for a in accounts]))  # connections and statements ready
    # 0.10-0.49 USD: each account's share of the batch stays under its cap (no call over it)
    costs = [f"0.{i % 40 + 10:02d}" for i in range(settings.calls_catch_up_batch_max_records)]  # the biggest
    passes: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(settings.gc_young_threshold // 2, thresholds[1], thresholds[2])
    gc.callbacks.append(count)
    try:
        await processor.process(
            records([call(accounts[i % ACCOUNTS_IN_FULL_BATCH], cost) for i, cost in enumerate(costs)])
        )
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*thresholds)
    assert passes == []
    assert await accrued(dbs, accounts[0]) == Decimal("0.01") + sum(Decimal(c) for c in costs[::ACCOUNTS_IN_FULL_BATCH])


def _metering(recent_calls: int):
    """A metering batch processor on the real database, like a process of its own: its own record
    of recent calls and its own meters in memory."""
    from functools import partial

    from services.usage_metering import handlers
    from services.usage_metering.settings import Settings
    from services.usage_metering.storage import MeterMemory, MeterStore, RecentCalls
    from shared.db import make_sessions
    from shared.runtime import BatchProcessor

    def build(dbs) -> BatchProcessor:
        return BatchProcessor(
            "usage-metering",
            make_sessions(dbs["usage_metering"]),
            handlers.registry,
            store=partial(MeterStore, recent_calls=RecentCalls(recent_calls), memory=MeterMemory()),
            settings=Settings(),
        )

    return build


def _memory(processor):
    return processor.store.keywords["memory"]


async def _as_it_stands(dbs, account: str) -> tuple[Decimal, Decimal]:
    """The open cycle's (billable, over cap) as the view ``meters`` gives it: its snapshot plus its calls after it."""
    row = await support.rows(
        dbs["usage_metering"],
        "select billable, over_cap from meters where account_id = :a and cycle_start = '2026-11-01'",
        a=account,
    )
    return row[0][0], row[0][1]


def _records(account: str, calls: list[m.CallCharged]):
    from shared.runtime.codec import Record

    return [
        Record("usage.calls", 0, i, account.encode(), c.model_dump_json().encode(), (), 1) for i, c in enumerate(calls)
    ]


def _reported_again(original: m.CallCharged) -> m.CallCharged:
    return original.model_copy(update={"message_id": uuid.uuid4()})  # the same call, a new report


async def _calls_recorded(dbs, account: str) -> int:
    return await scalar(dbs["usage_metering"], "select count(*) from calls where account_id = :a", a=account)


async def test_a_repeat_older_than_the_record_of_recent_calls_is_still_charged_once(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    processor = _metering(recent_calls=2)(dbs)
    first = [call(account, "1.000001"), call(account, "2.00"), call(account, "3.00")]
    await processor.process(_records(account, first))
    assert await accrued(dbs, account) == Decimal("6.000001")

    # first[0] is forgotten (only the last two are kept): its COPY meets the key, the batch is rolled
    # back and retried with its ids claimed by the deduplicating insert, and the call beside it is charged.
    await processor.process(_records(account, [_reported_again(first[0]), call(account, "0.50")]))
    await processor.process(_records(account, [_reported_again(first[2])]))  # remembered: dropped before the write
    assert await accrued(dbs, account) == Decimal("6.500001")
    assert await _calls_recorded(dbs, account) == 4


async def test_a_replay_by_a_fresh_worker_leaves_the_accrual_unchanged(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    calls = [call(account, f"{i}.25") for i in range(1, 6)]
    await _metering(recent_calls=1000)(dbs).process(_records(account, calls))
    before = await accrued(dbs, account), await _calls_recorded(dbs, account)
    replayed = _metering(recent_calls=1000)(dbs)  # a restarted worker remembers nothing
    await replayed.process(_records(account, calls))
    await replayed.process(_records(account, calls))  # now remembered: no COPY at all
    assert (await accrued(dbs, account), await _calls_recorded(dbs, account)) == before == (Decimal("16.25"), 5)


async def test_calls_of_a_batch_that_was_rolled_back_and_retried_are_charged(stack: Bus, dbs, monkeypatch) -> None:
    """Only committed calls enter the record of recent calls, and only a committed batch's meters
    enter memory: a batch retried after a failure would otherwise find its own calls there and
    charge none of them, or fold them twice."""
    from services.usage_metering.storage import MeterStore
    from shared.runtime import ConcurrentUpdate

    account = await open_account(stack)
    original, refused = MeterStore.create_meters, list[bool]()

    async def refuse_once(self: MeterStore, new) -> None:
        if not refused:
            refused.append(True)
            raise ConcurrentUpdate("the transaction failed after the calls were written")
        await original(self, new)

    monkeypatch.setattr(MeterStore, "create_meters", refuse_once)
    processor = _metering(recent_calls=1000)(dbs)
    await processor.process(_records(account, [call(account, "4.00"), call(account, "5.00")]))
    assert refused and await accrued(dbs, account) == Decimal("9.00")
    assert await _calls_recorded(dbs, account) == 2
    assert in_usd(_memory(processor).get(account, 0, NOV_1).meter).billable == Decimal("9.00")
