"""License orders' handlers: ``handler(unit, message)``; parse -> domain rule -> store -> emit."""

from __future__ import annotations

from contracts import messages as m
from contracts.topics import LICENSING_EVENTS
from services.license_orders import domain
from services.license_orders.settings import Settings
from services.license_orders.storage import Account, CommandState, LicenseStore
from shared.cycles import cycle_containing, next_cycle
from shared.rejections import Rejected
from shared.runtime.registry import HandlerRegistry
from shared.runtime.seals import Seals
from shared.runtime.seals import seal_cycles as seal_protocol
from shared.runtime.unit_of_work import UnitOfWork

registry = HandlerRegistry()
EVENTS = LICENSING_EVENTS.name
Work = UnitOfWork[LicenseStore, Settings]


def _balance(balance: domain.Balance) -> m.Balance:
    return m.Balance(
        purchased=balance.purchased,
        assigned=balance.assigned,
        scheduled_for_removal=balance.scheduled_for_removal,
        available=balance.available,
    )


async def _state(store: LicenseStore, command: m.Command, product: str, assignee_id: str = "") -> CommandState:
    domain.authorize(command.type, command.actor.role)
    state = await store.command_state(command.account_id, product, command.business_date, assignee_id)
    if state is None:
        raise Rejected("unknown_account", f"account {command.account_id} is not open")
    return state


@registry.on(m.AccountOpened)
async def account_opened(unit: Work, event: m.AccountOpened) -> None:
    await unit.lock_account(event.account_id)
    first = cycle_containing(event.billing_day, event.business_date)
    await unit.store.open_account(event.account_id, event.billing_day, first)
    for parked in await unit.release_parked(event.account_id):
        await registry.dispatch(unit, parked)


def _quote(state: CommandState, command: m.PreviewLicensePurchase | m.PurchaseLicenses) -> domain.PurchaseQuote:
    if state.unit_price is None:
        raise Rejected("unknown_product", f"{command.product} has no price in the catalog")
    account = state.account
    return domain.quote_purchase(
        state.balance,
        command.quantity,
        state.unit_price,
        command.business_date,
        account.billing_day,
        account.open_cycle,
        state.restorable,
    )


@registry.on(m.PreviewLicensePurchase)
async def preview_purchase(unit: Work, command: m.PreviewLicensePurchase) -> None:
    quote = _quote(await _state(unit.store, command, command.product), command)
    unit.emit(
        EVENTS,
        m.LicensePurchasePreview.caused_by(
            command,
            product=command.product,
            quantity=command.quantity,
            quantity_restored=quote.quantity_restored,
            quantity_added=quote.quantity_added,
            unit_price=quote.unit_price,
            prorated_amount=quote.prorated_amount,
            recurring_amount_per_cycle=quote.recurring_amount_per_cycle,
            cycle_start=quote.cycle.start,
            cycle_end=quote.cycle.end,
        ),
    )


@registry.on(m.PurchaseLicenses)
async def purchase(unit: Work, command: m.PurchaseLicenses) -> None:
    store = unit.store
    state = await _state(store, command, command.product)
    quote = _quote(state, command)
    after = domain.apply_purchase(state.balance, quote)
    if quote.quantity_restored:
        await store.restore(command.account_id, command.product, quote.quantity_restored, command.business_date)
    await store.record_purchase(
        command.account_id, command.product, command.business_date, quote, command.message_id, after
    )
    unit.emit(
        EVENTS,
        m.LicensesPurchased.caused_by(
            command,
            product=command.product,
            quantity_restored=quote.quantity_restored,
            quantity_added=quote.quantity_added,
            unit_price=quote.unit_price,
            prorated_amount=quote.prorated_amount,
            cycle_start=quote.cycle.start,
            cycle_end=quote.cycle.end,
            balance=_balance(after),
        ),
    )


@registry.on(m.RemoveLicenses)
async def remove(unit: Work, command: m.RemoveLicenses) -> None:
    store = unit.store
    state = await _state(store, command, command.product)
    account = state.account
    end = domain.removal_effective_on(command.business_date, account.billing_day, account.open_cycle)
    after, effective_on = domain.schedule_removal(
        state.balance,
        command.product,
        command.quantity,
        command.business_date,
        account.billing_day,
        account.open_cycle,
        held_at_end=await store.held_at(command.account_id, command.product, end),
    )
    await store.schedule_removal(command.account_id, command.product, command.quantity, effective_on, after)
    unit.emit(
        EVENTS,
        m.LicenseRemovalScheduled.caused_by(
            command,
            product=command.product,
            quantity=command.quantity,
            effective_on=effective_on,
            balance=_balance(after),
        ),
    )


@registry.on(m.AssignLicense)
async def assign(unit: Work, command: m.AssignLicense) -> None:
    store = unit.store
    state = await _state(store, command, command.product, command.assignee_id)
    after = domain.assign(state.balance, command.product, state.held)
    await store.add_assignment(command.account_id, command.product, command.assignee_id, after)
    unit.emit(
        EVENTS,
        m.LicenseAssigned.caused_by(
            command, product=command.product, assignee_id=command.assignee_id, balance=_balance(after)
        ),
    )


@registry.on(m.UnassignLicense)
async def unassign(unit: Work, command: m.UnassignLicense) -> None:
    store = unit.store
    state = await _state(store, command, command.product, command.assignee_id)
    after = domain.unassign(state.balance, command.product, state.held)
    await store.remove_assignment(command.account_id, command.product, command.assignee_id, after)
    unit.emit(
        EVENTS,
        m.LicenseUnassigned.caused_by(
            command, product=command.product, assignee_id=command.assignee_id, balance=_balance(after)
        ),
    )


@registry.on_batch(m.BillingCycleClosing)
async def seal_cycles(unit: Work, requests: list[m.BillingCycleClosing]) -> None:
    """Answer cycle close with each cycle's license charges and apply its removals, exactly once,
    set-based: one round per batch in which every account appears once (catch-ups take more)."""
    store = unit.store
    await seal_protocol(
        unit, requests, answers_to=EVENTS, ledger=store.seals, find_accounts=store.accounts_for_seal, seal=_seal
    )


async def _seal(unit: Work, seals: Seals[Account]) -> None:
    store, todo = unit.store, seals.todo
    due, later, balances, prices = await store.seal_inputs([(r.account_id, r.cycle_end) for r, _ in todo])
    changed: dict[tuple[str, str], domain.Balance] = {}
    recurring: dict[str, list[m.RecurringCharge]] = {}
    following = {a.account_id: next_cycle(a.billing_day, a.open_cycle) for _, a in todo}
    for request, account in todo:
        for product in m.PRODUCTS:
            key = (account.account_id, product)
            if key not in balances:
                continue
            after, kept = domain.seal(balances[key], due.get(key, 0), later.get(key, 0))
            if due.get(key):
                changed[key] = after
                unit.emit(
                    EVENTS,
                    m.LicensesRemoved.caused_by(
                        request,
                        product,
                        product=product,
                        quantity=due[key],
                        effective_on=request.cycle_end,
                        balance=_balance(after),
                    ),
                )
            charge = domain.recurring_charge(product, kept, prices[key], following[account.account_id])
            if charge is not None:
                recurring.setdefault(account.account_id, []).append(
                    m.RecurringCharge(
                        product=product,
                        quantity=charge.quantity,
                        unit_price=charge.unit_price,
                        amount=charge.amount,
                        period_start=charge.period.start,
                        period_end=charge.period.end,
                    )
                )
    await store.save_balances(changed)
    sealed_prorations = await store.finish_seals(
        [(a.account_id, a.open_cycle, following[a.account_id]) for _, a in todo]
    )
    for request, account in todo:
        sealed = m.LicenseCycleSealed.caused_by(
            request,
            cycle_start=request.cycle_start,
            cycle_end=request.cycle_end,
            recurring=recurring.get(account.account_id, []),
            prorations=[
                m.ProrationCharge(
                    purchase_id=row.purchase_id,
                    product=row.product,
                    quantity=row.quantity,
                    unit_price=row.unit_price,
                    amount=row.amount,
                    period_start=row.period_start,
                    period_end=row.period_end,
                    late=row.late,
                )
                for row in sealed_prorations.get(account.account_id, [])
            ],
        )
        seals.send(sealed, request.cycle_start)
