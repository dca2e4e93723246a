"""Usage metering's handlers. Calls are handled a batch at a time: dedupe, fold per meter in memory, one COPY."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal

from prometheus_client import Counter

from contracts import messages as m
from contracts.envelope import Envelope
from contracts.topics import METERING_ALERTS, METERING_USAGE, USAGE_CALLS
from services.usage_metering import domain
from services.usage_metering.calls_codec import Charged, contract_call, decode_calls
from services.usage_metering.settings import Settings
from services.usage_metering.storage import Account, Call, CallKey, MeterKey, MeterStore, Tracked
from shared.cycles import Cycle, cycle_containing, next_cycle
from shared.money import micro_dollars, tidy, usd
from shared.rejections import Rejected
from shared.runtime import ConcurrentUpdate, metrics
from shared.runtime.registry import HandlerRegistry
from shared.runtime.seals import Seals
from shared.runtime.seals import seal_cycles as seal_protocol
from shared.runtime.unit_of_work import UnitOfWork

registry = HandlerRegistry()
ALERTS = METERING_ALERTS.name
Work = UnitOfWork[MeterStore, Settings]

_ALERTS_SENT = Counter(
    "billing_alerts_sent", "Cap alerts sent, by alert: threshold_50/80/100, blocked, unblocked.", ["alert"]
)
ALERTS_SENT = {
    key: _ALERTS_SENT.labels(key) for key in [f"threshold_{p}" for p in domain.THRESHOLDS] + ["blocked", "unblocked"]
}
CALLS_ACCRUED = Counter("billing_calls_accrued", "Calls charged (a repeated report of a call is not counted).")
ACCRUED_USD = metrics.DecimalCounter(
    "billing_calls_accrued_usd", "Call costs accrued, USD: billable (up to the cap) or over_cap.", ["part"]
)
BILLABLE_USD, OVER_CAP_USD = ACCRUED_USD.labels("billable"), ACCRUED_USD.labels("over_cap")


def _alert_event(cause: Envelope, cycle: Cycle, alert: domain.Alert, part: str) -> m.Event:
    common = {"accrued": tidy(alert.billable), "cap": alert.cap, "cycle_start": cycle.start}
    if alert.kind == "threshold":
        assert alert.threshold_percent in (50, 80, 100)
        return m.CallingCreditThresholdReached.caused_by(
            cause, part, threshold_percent=alert.threshold_percent, **common
        )
    if alert.kind == "blocked":
        return m.CallingBlocked.caused_by(cause, part, **common)
    assert alert.reason in ("cap_raised", "new_cycle")
    return m.CallingUnblocked.caused_by(cause, part, reason=alert.reason, **common)


def _emit_alerts(unit: Work, cause: Envelope, cycle: Cycle, alerts: list[domain.Alert]) -> None:
    for alert in alerts:
        part = f"{cycle.start}:{alert.kind}:{alert.threshold_percent or alert.reason or ''}"
        unit.emit(ALERTS, _alert_event(cause, cycle, alert, part))
        if metrics.enabled:
            unit.count(ALERTS_SENT[f"threshold_{alert.threshold_percent}" if alert.kind == "threshold" else alert.kind])


def _current_cycle(account: Account, day: date) -> Cycle:
    return max(cycle_containing(account.billing_day, day), account.open_cycle)


@registry.on(m.AccountOpened)
async def account_opened(unit: Work, event: m.AccountOpened) -> None:
    store = unit.store
    await store.share_metering()  # always before a per-account lock, as the calls path does
    await unit.lock_account(event.account_id)
    first = cycle_containing(event.billing_day, event.business_date)
    await store.open_account(event.account_id, event.billing_day, domain.DEFAULT_CAP, first)
    parked = await unit.release_parked(event.account_id)
    calls = [p for p in parked if isinstance(p, m.CallCharged)]
    if calls:
        # Folded from the database, not into this process's memory: the account's partition of
        # usage.calls may be another replica's, which reads the meter when its first call comes.
        await _charge(unit, calls, in_memory=False)
    for other in parked:
        if not isinstance(other, m.CallCharged):
            await registry.dispatch(unit, other)


# Deduplicated by (account, call id) in `call_ids`; read by msgspec where it can (calls_codec.py).
@registry.on_batch(m.CallCharged, deduplicates=True, decoder=decode_calls)
async def calls_charged(unit: Work, batch: list[ChargedCall]) -> None:
    await _charge(unit, batch, in_memory=True)


# A call as the processor hands it over: the contract model, or as the calls' own decoder read it.
ChargedCall = m.CallCharged | Charged
# A batch's calls grouped by meter (account, cycle start), in the order they came.
ByMeter = dict[MeterKey, list[ChargedCall]]
Folded = tuple[list[Call], dict[MeterKey, Tracked], list[tuple[ChargedCall, Cycle, domain.Alert]]]


async def _charge(unit: Work, batch: Sequence[ChargedCall], in_memory: bool) -> None:
    """A batch of calls in a handful of statements: read the accounts, fold each meter's new calls
    in order (the meters from memory, or as they stand in the database), record the calls with what
    the fold decided for each (its place in its meter, its billable and over-cap parts), and the
    alerts. No meter is written: the meters held in memory become the folded ones when the batch
    commits, and are written back as snapshots every so often (``snapshots.py``).

    A call already recorded (reported again, or charged by another replica that owned its
    partition) makes the record refuse the whole batch: those calls drop out, their accounts'
    meters are read again from the database (which now holds the other replica's charges), and
    the batch is folded again."""
    store = unit.store
    await store.share_metering()
    account_ids = {call.account_id for call in batch}
    accounts = await (store.accounts_for_calls(account_ids) if in_memory else store.accounts(account_ids))
    unknown = sorted(account_ids - accounts.keys())
    for account_id in unknown:  # it may be opening right now in another transaction: wait for it
        await unit.lock_account(account_id)
    if unknown:
        accounts |= await store.accounts(unknown)

    # Each call once however often reported, and none this process committed lately, by meter.
    by_meter: ByMeter = {}
    cycles: dict[MeterKey, Cycle] = {}
    seen: set[CallKey] = set()
    recent = store.recent_calls
    for call in batch:
        account = accounts.get(call.account_id)
        if account is None:
            await unit.park(USAGE_CALLS.name, contract_call(unit, call))  # its AccountOpened has not arrived yet
            continue
        key = (call.account_id, call.call_id)
        if key in seen or key in recent:
            continue
        seen.add(key)
        cycle = cycle_containing(account.billing_day, call.business_date)
        meter = (call.account_id, cycle.start)
        calls = by_meter.get(meter)
        if calls is None:
            by_meter[meter] = [call]
            cycles[meter] = cycle
        else:
            calls.append(call)

    held = store.meters_in_memory({key: accounts[key[0]] for key in by_meter}) if in_memory else {}
    repeats = await store.recorded_before(
        [(call.account_id, call.call_id) for key, calls in by_meter.items() if key not in held for call in calls]
    )
    stale: set[str] = set()
    for _ in range(3):
        if repeats:
            by_meter = _without(by_meter, repeats)
        unread = {key: (accounts[key[0]], cycles[key]) for key in by_meter if key not in held}
        tracked = held | await store.meters_from_database(unread)
        rows, states, alerts = _fold(by_meter, tracked, accounts)
        found = await store.record_calls(rows)
        if not found:
            break
        repeats |= found
        stale |= {account_id for account_id, _ in found}
        held = {key: t for key, t in held.items() if key[0] not in stale}
    else:
        raise ConcurrentUpdate("the calls of this batch kept being charged by another transaction")

    new = [(a, t) for (a, _), t in states.items() if t.saved < 0]
    if new:
        await store.create_meters(new)
        states |= {(a, t.cycle.start): t._replace(saved=0) for a, t in new}
    epochs = {account_id: accounts[account_id].meter_epoch for account_id, _ in states}
    store.remember(states, epochs, seen, stale, in_memory)
    for call, cycle, alert in alerts:
        _emit_alerts(unit, contract_call(unit, call), cycle, [alert])
    if metrics.enabled:
        unit.count(CALLS_ACCRUED, len(rows))
        unit.count(BILLABLE_USD, usd(sum(row[5] for row in rows)))
        unit.count(OVER_CAP_USD, usd(sum(row[6] for row in rows)))


def _without(by_meter: ByMeter, repeats: set[CallKey]) -> ByMeter:
    """The meters' calls less those recorded before (a meter left with none drops out)."""
    kept: ByMeter = {}
    for key, calls in by_meter.items():
        left = [call for call in calls if (call.account_id, call.call_id) not in repeats]
        if left:
            kept[key] = left
    return kept


def _fold(by_meter: ByMeter, tracked: dict[MeterKey, Tracked], accounts: dict[str, Account]) -> Folded:
    """Each meter's calls in order, in micro-dollars (the ledger's unit): ``accrue_calls`` (or
    ``accrue_late_calls`` for a cycle already sealed), each call numbered after the meter's last one."""
    rows: list[Call] = []
    states: dict[MeterKey, Tracked] = {}
    alerts: list[tuple[ChargedCall, Cycle, domain.Alert]] = []
    for key, calls in by_meter.items():
        account_id, start = key
        before = tracked[key]
        cycle = before.cycle
        # A Charged holds its cost as the string it came as: Decimal reads either exactly.
        costs = [micro_dollars(Decimal(call.cost)) for call in calls]
        if cycle.start < accounts[account_id].open_cycle.start:  # sealed (an account's cycles never overlap)
            meter, parts = domain.accrue_late_calls(before.meter, costs)
        else:
            meter, parts, raised = domain.accrue_calls(before.meter, costs)
            if raised:
                alerts.extend((calls[index], cycle, alert) for index, alert in raised)
        seq = before.position
        for call, cost, (billable, over_cap) in zip(calls, costs, parts, strict=True):
            seq += 1
            rows.append((account_id, call.call_id, cost, start, seq, billable, over_cap))
        states[key] = Tracked(meter, cycle, seq, before.saved)
    return rows, states, alerts


@registry.on(m.SetCallingCreditCap)
async def set_cap(unit: Work, command: m.SetCallingCreditCap) -> None:
    domain.authorize_cap_change(command.actor.role)
    store = unit.store
    await store.own_metering()
    account = (await store.accounts([command.account_id], lock=True)).get(command.account_id)
    if account is None:
        raise Rejected("unknown_account", f"account {command.account_id} is not open")
    cycle = _current_cycle(account, command.business_date)
    meter = (await store.meters([(account.account_id, cycle.start)])).get((account.account_id, cycle.start))
    meter, alerts = domain.change_cap(meter or domain.Meter(cap=account.cap), command.cap)
    await store.save_meters({(account.account_id, cycle): meter})
    await store.set_cap(account.account_id, command.cap)
    unit.emit(
        ALERTS,
        m.CallingCreditCapChanged.caused_by(
            command, cap=command.cap, accrued=tidy(meter.billable), cycle_start=cycle.start
        ),
    )
    _emit_alerts(unit, command, cycle, alerts)


@registry.on_batch(m.BillingCycleClosing)
async def seal_cycles(unit: Work, requests: list[m.BillingCycleClosing]) -> None:
    """Report each cycle's accrual and earlier cycles' late usage; start the next cycle unblocked.
    Set-based: one round per batch in which every account appears once (catch-ups take more)."""
    store = unit.store
    await store.own_metering()

    async def find_accounts(account_ids: list[str]) -> dict[str, Account]:
        return await store.accounts(account_ids, lock=True)

    await seal_protocol(
        unit, requests, answers_to=METERING_USAGE.name, ledger=store.seals, find_accounts=find_accounts, seal=_seal
    )


async def _seal(unit: Work, seals: Seals[Account]) -> None:
    store, todo = unit.store, seals.todo
    following = {a.account_id: next_cycle(a.billing_day, a.open_cycle) for _, a in todo}
    meters = await store.meters(
        [(a.account_id, a.open_cycle.start) for _, a in todo] + [(a, c.start) for a, c in following.items()]
    )
    late = await store.late_meters_many([(a.account_id, a.open_cycle.start) for _, a in todo])
    changed: dict[tuple[str, Cycle], domain.Meter] = {}
    for request, account in todo:
        cycle, nxt = account.open_cycle, following[account.account_id]
        closing = meters.get((account.account_id, cycle.start)) or domain.Meter(cap=account.cap)
        upcoming = meters.get((account.account_id, nxt.start)) or domain.Meter(cap=account.cap)
        late_lines = []
        for late_cycle, meter in late.get(account.account_id, []):
            late_lines.append(
                m.LateUsage(cycle_start=late_cycle.start, cycle_end=late_cycle.end, amount=meter.late_unbilled)
            )
            changed[(account.account_id, late_cycle)] = meter._replace(late_unbilled=domain.ZERO)
        upcoming, alerts = domain.start_cycle(closing, upcoming)
        changed[(account.account_id, cycle)] = closing._replace(blocked=False)
        changed[(account.account_id, nxt)] = upcoming
        sealed = m.UsageCycleSealed.caused_by(
            request,
            cycle_start=cycle.start,
            cycle_end=cycle.end,
            cap=closing.cap,
            accrued=closing.billable,
            over_cap=closing.over_cap,
            late=late_lines,
        )
        seals.send(sealed, cycle.start)
        _emit_alerts(unit, request, nxt, alerts)
    await store.save_meters(changed)
    await store.move_open_cycles([(a.account_id, following[a.account_id]) for _, a in todo])
