"""Every message of the public contract (``../shared/spec/contract.md``), as pydantic models.

Message types the contract page does not list, added by this project (all optional to
clients): ``BillingCycleClosing`` on ``billing.cycles``, ``LicenseCycleSealed`` on
``licensing.events`` and ``UsageCycleSealed`` on ``metering.usage``: the cycle-close
protocol described in ``docs/cycle-close.md``.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from contracts.envelope import AccountId, Command, ContractModel, Day, Event, Money

Product = Literal["user", "room_phone", "shared_line", "fax"]
PRODUCTS: tuple[Product, ...] = ("user", "room_phone", "shared_line", "fax")
LicenseQuantity = Annotated[int, Field(ge=1, le=10_000)]

MAX_CALL_COST = Decimal("10000")
MICRO_DOLLAR = Decimal("0.000001")


def _call_cost(cost: Decimal) -> Decimal:
    if cost < 0:
        raise ValueError("a call cost cannot be negative")
    if cost > MAX_CALL_COST:
        raise ValueError(f"a call cost over {MAX_CALL_COST} USD is not plausible")
    if cost != cost.quantize(MICRO_DOLLAR):  # cheaper than as_tuple() on the hot path
        raise ValueError("a call cost has at most 6 decimal places")
    return cost


def _non_negative(amount: Decimal) -> Decimal:
    if amount < 0:
        raise ValueError("amount cannot be negative")
    return amount


CallCost = Annotated[Money, AfterValidator(_call_cost)]
Price = Annotated[Money, AfterValidator(_non_negative)]


# ---------------------------------------------------------------- platform.accounts
class AccountOpened(Event):
    type: Literal["AccountOpened"] = "AccountOpened"
    billing_day: int = Field(ge=1, le=31)
    currency: Literal["USD"] = "USD"


# ---------------------------------------------------------------- licensing.commands
class PreviewLicensePurchase(Command):
    type: Literal["PreviewLicensePurchase"] = "PreviewLicensePurchase"
    product: Product
    quantity: LicenseQuantity


class PurchaseLicenses(Command):
    type: Literal["PurchaseLicenses"] = "PurchaseLicenses"
    product: Product
    quantity: LicenseQuantity


class RemoveLicenses(Command):
    type: Literal["RemoveLicenses"] = "RemoveLicenses"
    product: Product
    quantity: LicenseQuantity


class AssignLicense(Command):
    type: Literal["AssignLicense"] = "AssignLicense"
    product: Product
    assignee_id: str = Field(min_length=1, max_length=128)


class UnassignLicense(Command):
    type: Literal["UnassignLicense"] = "UnassignLicense"
    product: Product
    assignee_id: str = Field(min_length=1, max_length=128)


# ---------------------------------------------------------------- licensing.events
class Balance(ContractModel):
    purchased: int
    assigned: int
    scheduled_for_removal: int
    available: int


class LicensePurchasePreview(Event):
    type: Literal["LicensePurchasePreview"] = "LicensePurchasePreview"
    product: Product
    quantity: int
    quantity_restored: int
    quantity_added: int
    unit_price: Money
    prorated_amount: Money
    recurring_amount_per_cycle: Money
    cycle_start: Day
    cycle_end: Day


class LicensesPurchased(Event):
    type: Literal["LicensesPurchased"] = "LicensesPurchased"
    product: Product
    quantity_restored: int
    quantity_added: int
    unit_price: Money
    prorated_amount: Money
    cycle_start: Day
    cycle_end: Day
    balance: Balance


class LicenseRemovalScheduled(Event):
    type: Literal["LicenseRemovalScheduled"] = "LicenseRemovalScheduled"
    product: Product
    quantity: int
    effective_on: Day
    balance: Balance


class LicenseAssigned(Event):
    type: Literal["LicenseAssigned"] = "LicenseAssigned"
    product: Product
    assignee_id: str
    balance: Balance


class LicenseUnassigned(Event):
    type: Literal["LicenseUnassigned"] = "LicenseUnassigned"
    product: Product
    assignee_id: str
    balance: Balance


class LicensesRemoved(Event):
    type: Literal["LicensesRemoved"] = "LicensesRemoved"
    product: Product
    quantity: int
    effective_on: Day
    balance: Balance


class RecurringCharge(ContractModel):
    product: Product
    quantity: int
    unit_price: Money
    amount: Money
    period_start: Day
    period_end: Day


class ProrationCharge(ContractModel):
    purchase_id: uuid.UUID
    product: Product
    quantity: int
    unit_price: Money
    amount: Money
    period_start: Day
    period_end: Day
    late: bool = False


class LicenseCycleSealed(Event):
    """License orders' answer to ``BillingCycleClosing``: what the cycle owes for licenses."""

    type: Literal["LicenseCycleSealed"] = "LicenseCycleSealed"
    cycle_start: Day
    cycle_end: Day
    recurring: list[RecurringCharge]
    prorations: list[ProrationCharge]


class CommandRejected(Event):
    type: Literal["CommandRejected"] = "CommandRejected"
    command_type: str
    reason_code: str
    reason: str


# ---------------------------------------------------------------- usage.calls
class CallCharged(Event):
    type: Literal["CallCharged"] = "CallCharged"
    call_id: str = Field(min_length=1, max_length=128)
    cost: CallCost


# ---------------------------------------------------------------- metering.commands / alerts
class SetCallingCreditCap(Command):
    type: Literal["SetCallingCreditCap"] = "SetCallingCreditCap"
    cap: Annotated[Money, AfterValidator(_non_negative)]


class CallingCreditCapChanged(Event):
    type: Literal["CallingCreditCapChanged"] = "CallingCreditCapChanged"
    cap: Money
    accrued: Money
    cycle_start: Day


class CallingCreditThresholdReached(Event):
    type: Literal["CallingCreditThresholdReached"] = "CallingCreditThresholdReached"
    threshold_percent: Literal[50, 80, 100]
    accrued: Money
    cap: Money
    cycle_start: Day


class CallingBlocked(Event):
    type: Literal["CallingBlocked"] = "CallingBlocked"
    accrued: Money
    cap: Money
    cycle_start: Day


class CallingUnblocked(Event):
    type: Literal["CallingUnblocked"] = "CallingUnblocked"
    reason: Literal["cap_raised", "new_cycle"]
    accrued: Money
    cap: Money
    cycle_start: Day


class LateUsage(ContractModel):
    cycle_start: Day
    cycle_end: Day
    amount: Money


class UsageCycleSealed(Event):
    """Usage metering's answer to ``BillingCycleClosing`` (internal topic ``metering.usage``)."""

    type: Literal["UsageCycleSealed"] = "UsageCycleSealed"
    cycle_start: Day
    cycle_end: Day
    cap: Money
    accrued: Money
    over_cap: Money
    late: list[LateUsage] = []


# ---------------------------------------------------------------- billing.*
class DevicePurchased(Event):
    type: Literal["DevicePurchased"] = "DevicePurchased"
    order_id: str = Field(min_length=1, max_length=128)
    sku: str = Field(min_length=1, max_length=64)
    description: str = Field(max_length=256)
    quantity: int = Field(ge=1, le=100_000)
    unit_price: Price


class CloseBillingCycles(Command):
    type: Literal["CloseBillingCycles"] = "CloseBillingCycles"
    as_of: Day
    account_ids: list[AccountId] | None = None


InvoiceLineKind = Literal["recurring", "proration", "calling_credits", "device"]


class InvoiceLine(ContractModel):
    kind: InvoiceLineKind
    product: str | None = None
    description: str
    quantity: int
    unit_price: Money | None = None
    amount: Money
    period_start: Day
    period_end: Day
    late: bool = False


class InvoiceIssued(Event):
    type: Literal["InvoiceIssued"] = "InvoiceIssued"
    invoice_id: uuid.UUID
    cycle_start: Day
    cycle_end: Day
    issued_on: Day
    due_on: Day
    currency: Literal["USD"] = "USD"
    lines: list[InvoiceLine]
    total: Money


class BillingCycleClosing(Event):
    """Cycle close asks license orders and usage metering to seal this cycle of the account."""

    type: Literal["BillingCycleClosing"] = "BillingCycleClosing"
    cycle_start: Day
    cycle_end: Day


class BillingCycleClosed(Event):
    type: Literal["BillingCycleClosed"] = "BillingCycleClosed"
    cycle_start: Day
    cycle_end: Day
    next_cycle_start: Day
    next_cycle_end: Day
