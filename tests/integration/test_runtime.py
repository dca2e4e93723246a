"""The consumer runtime against the real broker and database: inbox, outbox, DLQ, restarts."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg
import pytest
import sqlalchemy as sa

from contracts import messages as m
from deploy import credentials
from shared.db import make_sessions
from shared.runtime import BatchProcessor, HandlerRegistry, Unit
from shared.runtime.codec import Record
from shared.runtime.tables import OUTBOX_CHANNEL
from tests.e2e.test_license_orders import command, open_account
from tests.support import ADMIN, BOOTSTRAP, Bus, dsn, message, new_account, scalar, scratch_topic, wait_until

pytestmark = pytest.mark.stack


def rejection(account: str, reason: str, command_type: str = "x") -> m.CommandRejected:
    """An event to put in an outbox by hand."""
    return m.CommandRejected(
        message_id=uuid.uuid4(),
        account_id=account,
        occurred_at=datetime.now(UTC),
        command_type=command_type,
        reason_code="x",
        reason=reason,
    )


async def test_an_opened_account_is_recorded_by_all_three_services(stack: Bus, dbs) -> None:
    account = new_account()
    await stack.send("platform.accounts", message(m.AccountOpened, account, date(2026, 11, 3), billing_day=3))
    tables = {"license_orders": "accounts", "usage_metering": "accounts", "cycle_close": "billing_accounts"}
    for service, table in tables.items():
        day = await wait_until(
            lambda s=service, t=table: scalar(dbs[s], f"select billing_day from {t} where account_id = :a", a=account),  # type: ignore[misc]
            what=f"{service} to record the account",
        )
        assert day == 3


async def test_every_contract_message_round_trips_through_kafka_with_money_exact(stack: Bus) -> None:
    from tests.unit.test_contracts import examples

    async with scratch_topic(1, dashboards=("READ", "WRITE")) as topic:
        bus = Bus([topic], principal="dashboards")
        await bus.start()
        try:
            sent = examples()
            for example in sent:
                await bus.send(topic, example)
            await bus.wait_for(lambda: len(bus.raw) >= len(sent), what="every example back")
            received = [type(example).model_validate_json(raw) for example, (_, raw) in zip(sent, bus.raw, strict=True)]
        finally:
            await bus.stop()

    assert received == sent
    call = next(r for r in received if isinstance(r, m.CallCharged))
    assert call.cost == Decimal("12.345678") and isinstance(call.cost, Decimal)


async def test_a_rolled_back_transaction_publishes_nothing(stack: Bus, dbs) -> None:
    registry = HandlerRegistry()
    account = new_account()
    would_be = rejection(account, "emitted, then the handler failed")

    @registry.on(m.PurchaseLicenses)
    async def failing(unit: Unit, cmd: m.PurchaseLicenses) -> None:
        unit.emit("licensing.events", would_be)
        await unit.session.execute(
            sa.text("insert into accounts values (:a, 1, '2026-11-01', '2026-12-01')"), {"a": account}
        )
        raise RuntimeError("the handler failed after writing")

    processor = BatchProcessor("test", make_sessions(dbs["license_orders"]), registry)
    cmd = message(m.PurchaseLicenses, account, date(2026, 11, 5), actor=ADMIN, product="user", quantity=1)
    offset = random.randrange(10**12, 10**13)
    await processor.process([Record("licensing.commands", 0, offset, account.encode(), cmd.model_dump_json().encode())])

    [letter] = await stack.wait_count("licensing.commands.dlq", 1, offset=offset)
    assert "the handler failed after writing" in letter["error"]
    assert await scalar(dbs["license_orders"], "select count(*) from accounts where account_id = :a", a=account) == 0
    assert (
        await scalar(dbs["license_orders"], "select count(*) from outbox where message_id = :i", i=would_be.message_id)
        == 0
    )
    assert stack.matching("licensing.events", message_id=str(would_be.message_id)) == []


async def test_a_commit_that_writes_outbox_rows_wakes_the_relay_of_any_replica_and_a_rollback_does_not(
    stack: Bus, dbs
) -> None:
    """The relay leader may run in another replica: it listens on the outbox channel, and the
    notification comes with the commit (never with a rollback)."""
    listener = await asyncpg.connect(dsn("license_orders"))
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(OUTBOX_CHANNEL, lambda _c, _pid, channel, _p: heard.put_nowait(channel))
    sessions = make_sessions(dbs["license_orders"])

    try:
        async with sessions() as session:
            transaction = await session.begin()
            unit = Unit(session)
            unit.emit("licensing.events", rejection(new_account(), "rolled back"))
            await unit.flush()
            await transaction.rollback()
        await asyncio.sleep(0.5)
        assert heard.empty()

        async with sessions() as session, session.begin():
            unit = Unit(session)
            unit.emit("licensing.events", rejection(new_account(), "committed"))
            await unit.flush()
        assert await asyncio.wait_for(heard.get(), timeout=5) == OUTBOX_CHANNEL
    finally:
        await listener.close()


async def test_statements_on_the_driver_connection_belong_to_the_units_transaction(dbs) -> None:
    """The hot paths write through asyncpg directly, even as a transaction's first statement:
    those writes must commit and roll back with the session's transaction, never on their own."""
    sessions = make_sessions(dbs["license_orders"])
    kept, dropped = new_account(), new_account()

    async def open_first_thing(account: str) -> None:
        raw = await Unit(session).db()
        await raw.execute("insert into accounts values ($1, 1, '2026-11-01', '2026-12-01')", account)

    async with sessions() as session:
        transaction = await session.begin()
        await open_first_thing(dropped)
        await transaction.rollback()
    async with sessions() as session, session.begin():
        await open_first_thing(kept)

    count = "select count(*) from accounts where account_id = :a"
    assert await scalar(dbs["license_orders"], count, a=dropped) == 0
    assert await scalar(dbs["license_orders"], count, a=kept) == 1


async def test_a_batch_handler_gets_each_message_as_it_arrived_for_keeping(dbs) -> None:
    registry = HandlerRegistry()
    kept: list[bytes] = []

    @registry.on_batch(m.UsageCycleSealed, deduplicates=True)
    async def keep(unit: Unit, reports: list[m.UsageCycleSealed]) -> None:
        kept.extend(unit.payload_of(report) for report in reports)

    account = new_account()
    report = m.UsageCycleSealed(
        message_id=uuid.uuid4(),
        account_id=account,
        occurred_at=datetime(2026, 12, 1, tzinfo=UTC),
        cycle_start=date(2026, 11, 1),
        cycle_end=date(2026, 12, 1),
        cap=Decimal("250.00"),
        accrued=Decimal("12.345678"),
        over_cap=Decimal("0"),
    )
    # A field this version does not know survives: what is kept is the record, not a re-dump.
    arrived = report.model_dump_json()[:-1].encode() + b', "added_later": 1}'
    processor = BatchProcessor("test", make_sessions(dbs["cycle_close"]), registry)
    await processor.process([Record("metering.usage", 0, 1, account.encode(), arrived)])

    assert kept == [arrived]
    assert m.UsageCycleSealed.model_validate_json(kept[0]) == report


async def test_a_batch_of_calls_reaches_its_handler_as_it_arrived_and_a_repeated_message_once(dbs) -> None:
    registry = HandlerRegistry()
    handed: list[list[tuple[str, bytes]]] = []

    @registry.on_batch(m.CallCharged, deduplicates=True)
    async def take(unit: Unit, calls: list[m.CallCharged]) -> None:
        handed.append([(call.call_id, unit.payload_of(call)) for call in calls])

    account = new_account()
    values = [
        m.CallCharged(
            message_id=uuid.uuid4(),
            account_id=account,
            occurred_at=datetime(2026, 11, 20, tzinfo=UTC),
            call_id=f"call-{n}",
            cost=Decimal("0.25"),
        )
        .model_dump_json()
        .encode()
        for n in range(3)
    ]
    processor = BatchProcessor("test", make_sessions(dbs["usage_metering"]), registry)
    await processor.process([Record("usage.calls", 0, n, account.encode(), v) for n, v in enumerate(values)])
    repeated = [values[0], values[1], values[0]]  # one message twice in a batch: its second copy has no effect
    await processor.process([Record("usage.calls", 0, 10 + n, account.encode(), v) for n, v in enumerate(repeated)])

    assert handed == [
        [("call-0", values[0]), ("call-1", values[1]), ("call-2", values[2])],
        [("call-0", values[0]), ("call-1", values[1])],
    ]


async def test_an_outbox_row_left_by_a_killed_process_is_published_once_after_restart(stack: Bus, dbs, workers) -> None:
    workers.stop("license_orders", signal.SIGKILL)
    left_behind = rejection(new_account(), "committed just before the crash", "PurchaseLicenses")
    async with dbs["license_orders"].begin() as conn:
        await conn.execute(
            sa.text("insert into outbox (message_id, topic, key, payload) values (:i, 'licensing.events', :k, :p)"),
            {"i": left_behind.message_id, "k": left_behind.account_id, "p": left_behind.model_dump_json().encode()},
        )
    workers.start("license_orders")
    await stack.wait_count("licensing.events", 1, timeout=60, message_id=str(left_behind.message_id))
    account = await open_account(stack)
    await command(stack, m.PreviewLicensePurchase, account, product="user", quantity=1)  # the relay moved past it

    assert len(stack.matching("licensing.events", message_id=str(left_behind.message_id))) == 1
    assert (
        await scalar(
            dbs["license_orders"], "select count(*) from outbox where message_id = :i", i=left_behind.message_id
        )
        == 0
    )


async def test_garbage_on_a_command_topic_goes_to_its_dlq_and_the_next_command_is_processed(stack: Bus) -> None:
    account = await open_account(stack)
    await stack.send("licensing.commands", b"{{{ not json", key=account)
    await stack.send("licensing.commands", b'{"type": "PurchaseLicenses", "quantity": 1}', key=account)
    reply = await command(stack, m.PurchaseLicenses, account, product="user", quantity=1)

    letters = await stack.wait_count("licensing.commands.dlq", 2, key=account)
    assert reply["type"] == "LicensesPurchased"
    assert {("not JSON" in x["error"]) or ("unreadable envelope" in x["error"]) for x in letters} == {True}


async def test_a_worker_killed_mid_stream_ends_with_every_command_applied_once(stack: Bus, dbs, workers) -> None:
    account = await open_account(stack)
    await command(stack, m.PurchaseLicenses, account, product="user", quantity=150)
    invites = [
        message(m.AssignLicense, account, date(2026, 11, 16), actor=ADMIN, product="user", assignee_id=f"u{n}")
        for n in range(200)
    ]
    for invite in invites[:100]:
        await stack.send("licensing.commands", invite)
    workers.stop("license_orders", signal.SIGKILL)
    for invite in invites[100:]:
        await stack.send("licensing.commands", invite)
    workers.start("license_orders")
    for invite in invites:
        await stack.wait_count("licensing.events", 1, timeout=60, causation_id=str(invite.message_id))
    await asyncio.sleep(0)

    replies = [stack.matching("licensing.events", causation_id=str(i.message_id)) for i in invites]
    assert all(len({r["message_id"] for r in rs}) == 1 for rs in replies)  # one result each (after dedupe)
    assert [r[0]["type"] for r in replies] == ["LicenseAssigned"] * 150 + ["CommandRejected"] * 50
    assigned = await scalar(
        dbs["license_orders"], "select assigned from balances where account_id = :a and product = 'user'", a=account
    )
    assert assigned == 150


async def test_an_event_the_broker_can_never_take_is_set_aside_and_does_not_block_the_relay(stack: Bus, dbs) -> None:
    oversized = uuid.uuid4()
    account = await open_account(stack)
    behind = rejection(account, "written right after the oversized event, same partition")
    async with dbs["license_orders"].begin() as conn:  # one round: the oversized row, then a normal one
        await conn.execute(
            sa.text(
                "insert into outbox (message_id, topic, key, payload) "
                "values (:i, 'licensing.events', :k, :p), (:j, 'licensing.events', :k, :q)"
            ),
            {
                "i": oversized,
                "k": account,
                "p": b"x" * 2_000_000,
                "j": behind.message_id,
                "q": behind.model_dump_json().encode(),
            },
        )
    await stack.wait_count("licensing.events", 1, message_id=str(behind.message_id))
    reply = await command(stack, m.PurchaseLicenses, account, product="user", quantity=1)  # same partition

    assert reply["type"] == "LicensesPurchased"
    assert await wait_until(
        lambda: scalar(
            dbs["license_orders"],
            "select count(*) from dead_letters where topic = 'outbox:licensing.events' and error like '%TooLarge%' "
            "and length(payload) = 2000000",
        ),
        what="the oversized event to be set aside",
    )
    assert await scalar(dbs["license_orders"], "select count(*) from outbox where message_id = :i", i=oversized) == 0


async def test_a_redelivered_poison_record_gives_one_dead_letter_but_a_recreated_topic_is_not_a_redelivery(
    stack: Bus, dbs
) -> None:
    processor = BatchProcessor("test", make_sessions(dbs["license_orders"]), HandlerRegistry())
    offset = random.randrange(10**12, 10**13)
    first = Record("licensing.commands", 1, offset, b"k", b"not json", (), 1_000)
    again = Record("licensing.commands", 1, offset, b"k", b"not json", (), 1_000)  # the same record, redelivered
    reborn = Record("licensing.commands", 1, offset, b"k", b"not json either", (), 2_000)  # topic recreated
    for record in (first, again, reborn):
        await processor.process([record])

    stored = await scalar(
        dbs["license_orders"],
        'select count(*) from dead_letters where topic = :t and partition = 1 and "offset" = :o',
        t="licensing.commands",
        o=offset,
    )
    assert stored == 2
    letters = await stack.wait_count("licensing.commands.dlq", 2, offset=offset)
    assert sorted(x["value_text"] for x in letters) == ["not json", "not json either"]


async def test_the_relay_publishes_a_big_backlog_once_each_in_order_per_key(stack: Bus, dbs) -> None:
    """The relay sends per-partition batches; a record larger than a batch goes alone. Every row
    arrives exactly once and each key's rows arrive in the order they were written."""

    async with scratch_topic(6, license_orders=("WRITE",), dashboards=("READ",)) as topic:
        await _relay_backlog_in_order(dbs, topic)


async def _relay_backlog_in_order(dbs, topic: str) -> None:
    from aiokafka import AIOKafkaConsumer

    keys = [f"k{i}" for i in range(40)]
    written = []
    for seq in range(3000):
        key = keys[seq % 7 * 5 % 40] if seq % 3 else keys[seq % 40]
        padding = "x" * 400_000 if seq in (1234, 2345) else ""  # over a 256 KiB batch
        written.append((uuid.uuid4(), key, f'{{"key":"{key}","seq":{seq},"pad":"{padding}"}}'.encode()))
    async with dbs["license_orders"].begin() as conn:
        await conn.execute(
            sa.text(
                "insert into outbox (message_id, topic, key, payload) "
                "select * from unnest(cast(:i as uuid[]), cast(:t as text[]), cast(:k as text[]), cast(:p as bytea[]))"
            ),
            {
                "i": [w[0] for w in written],
                "t": [topic] * len(written),
                "k": [w[1] for w in written],
                "p": [w[2] for w in written],
            },
        )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        **credentials.kafka_options("dashboards"),
    )
    await consumer.start()
    received: list[tuple[str, int]] = []
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(received) < len(written) and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    body = json.loads(record.value)
                    assert record.key == body["key"].encode()
                    received.append((body["key"], body["seq"]))
        await asyncio.sleep(1)  # anything sent twice would show up now
        for records in (await consumer.getmany(timeout_ms=500)).values():
            received += [(r.key.decode(), -1) for r in records]
    finally:
        await consumer.stop()

    assert sorted(seq for _, seq in received) == list(range(3000))  # each once, none lost
    for key in keys:
        mine = [seq for k, seq in received if k == key]
        assert mine == sorted(mine), f"{key} out of order"


async def test_a_relay_whose_broker_is_out_of_reach_at_start_up_starts_and_keeps_trying() -> None:
    """A worker whose broker is away at start-up must not die in its start hook: the relay's loop retries."""
    from shared.runtime.relay import OutboxRelay

    nowhere = {"bootstrap_servers": "127.0.0.1:1"}
    relay = OutboxRelay("relay-start-test", "postgresql://nobody:nothing@127.0.0.1:1/none", nowhere)
    await relay.start()
    try:
        await asyncio.sleep(0.5)
        assert relay.producer is None
        assert relay._task is not None and not relay._task.done()  # still trying, not crashed
    finally:
        await relay.stop()
