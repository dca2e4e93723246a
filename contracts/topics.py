"""The topic registry: every topic, its partition count and which message types it carries.

Topics are created from this registry (``python -m deploy.provision``), never by broker
auto-creation. Several partitions per topic so that ordering by key (the account id) matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts import messages as m
from contracts.envelope import Envelope


def dlq_of(topic: str) -> str:
    """Where a topic's unreadable or invalid records go."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    description: str
    messages: tuple[type[Envelope], ...] = field(default=())
    rejections_to: str | None = None
    """For a command topic: where ``CommandRejected`` goes (where the success event would go)."""

    @property
    def dlq(self) -> str:
        return dlq_of(self.name)

    def model_for(self, message_type: str) -> type[Envelope] | None:
        for model in self.messages:
            if model.model_fields["type"].default == message_type:
                return model
        return None


def _topic(
    name: str, partitions: int, description: str, *messages: type[Envelope], rejections_to: str | None = None
) -> Topic:
    return Topic(name, partitions, description, tuple(messages), rejections_to)


PLATFORM_ACCOUNTS = _topic("platform.accounts", 6, "Accounts opened by the platform.", m.AccountOpened)
LICENSING_COMMANDS = _topic(
    "licensing.commands",
    6,
    "License commands from the admin UI and provisioning.",
    m.PreviewLicensePurchase,
    m.PurchaseLicenses,
    m.RemoveLicenses,
    m.AssignLicense,
    m.UnassignLicense,
    rejections_to="licensing.events",
)
LICENSING_EVENTS = _topic(
    "licensing.events",
    6,
    "Results of license commands, removals applied at cycle end, and cycle seals.",
    m.LicensePurchasePreview,
    m.LicensesPurchased,
    m.LicenseRemovalScheduled,
    m.LicenseAssigned,
    m.LicenseUnassigned,
    m.LicensesRemoved,
    m.LicenseCycleSealed,
    m.CommandRejected,
)
USAGE_CALLS = _topic("usage.calls", 12, "Charged calls reported by the telephony platform.", m.CallCharged)
METERING_COMMANDS = _topic(
    "metering.commands",
    6,
    "Calling-credit cap changes from support and sales tools.",
    m.SetCallingCreditCap,
    rejections_to="metering.alerts",
)
METERING_ALERTS = _topic(
    "metering.alerts",
    6,
    "Cap thresholds, blocking and unblocking, cap changes.",
    m.CallingCreditCapChanged,
    m.CallingCreditThresholdReached,
    m.CallingBlocked,
    m.CallingUnblocked,
    m.CommandRejected,
)
METERING_USAGE = _topic(
    "metering.usage", 6, "Internal: usage metering's seal of a cycle, read by cycle close.", m.UsageCycleSealed
)
BILLING_CHARGES = _topic("billing.charges", 6, "One-off device orders from the hardware store.", m.DevicePurchased)
BILLING_COMMANDS = _topic(
    "billing.commands",
    6,
    "Cycle-close triggers from the scheduler and operators.",
    m.CloseBillingCycles,
    rejections_to="billing.cycles",
)
BILLING_INVOICES = _topic("billing.invoices", 6, "Invoices issued at cycle close.", m.InvoiceIssued)
BILLING_CYCLES = _topic(
    "billing.cycles",
    6,
    "Cycle-close protocol: a cycle closing (seal request) and closed.",
    m.BillingCycleClosing,
    m.BillingCycleClosed,
    m.CommandRejected,
)

TOPICS: tuple[Topic, ...] = (
    PLATFORM_ACCOUNTS,
    LICENSING_COMMANDS,
    LICENSING_EVENTS,
    USAGE_CALLS,
    METERING_COMMANDS,
    METERING_ALERTS,
    METERING_USAGE,
    BILLING_CHARGES,
    BILLING_COMMANDS,
    BILLING_INVOICES,
    BILLING_CYCLES,
)
BY_NAME = {topic.name: topic for topic in TOPICS}
COMMAND_TOPICS = frozenset(t.name for t in TOPICS if t.rejections_to is not None)
"""Topics that carry commands (their rejections go elsewhere): the records on them are signed."""
DLQ_PARTITIONS = 3


def all_topic_names() -> list[tuple[str, int]]:
    """Every topic to create, its ``.dlq`` included, with partition counts."""
    names = [(t.name, t.partitions) for t in TOPICS]
    names += [(t.dlq, DLQ_PARTITIONS) for t in TOPICS]
    return names
