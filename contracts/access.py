"""Who may write and read each topic: the contract's topic table as data, one principal per party.

The broker's ACLs are generated from this registry (``python -m deploy.provision``) and a test
compares what the broker holds with it. Principals are Kafka SCRAM users; a service's principal
also names its consumer group and its PostgreSQL role and database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contracts.topics import BY_NAME, COMMAND_TOPICS, TOPICS

Kind = Literal["service", "client", "operator", "admin"]


@dataclass(frozen=True)
class Principal:
    name: str
    kind: Kind
    description: str
    database: str | None = None
    """A service's own PostgreSQL database; its login role has the same name."""
    claims: tuple[str, ...] = ()
    """The actor roles its signed commands may claim (``shared.runtime.authentication``)."""

    @property
    def group(self) -> str:
        """The consumer group a service uses; for any other reader, the prefix of the groups it may use."""
        return self.name


def _service(name: str, description: str) -> Principal:
    return Principal(name, "service", description, database=name.replace("-", "_"))


LICENSE_ORDERS = _service("license-orders", "The license orders service.")
USAGE_METERING = _service("usage-metering", "The usage metering service.")
CYCLE_CLOSE = Principal(
    "cycle-close",
    "service",
    "The cycle close service.",
    database="cycle_close",
    # It re-sends a trigger's continuation to billing.commands with the trigger's actor; only cycle
    # close itself trusts its key (trusted_keys).
    claims=("service", "operator"),
)
ALERT_BOARD = _service("alert-board", "The alert board: a view of alerts and closed cycles for operations.")
ACCOUNT_SERVICE = Principal("account-service", "client", "The platform's account service.")
ADMIN_UI = Principal(
    "admin-ui", "client", "The office administrators' UI (one of the 'UIs').", claims=("office_admin",)
)
PROVISIONING = Principal("provisioning", "client", "User provisioning (assigns seats).", claims=("service",))
TELEPHONY = Principal("telephony", "client", "The telephony platform.")
SUPPORT_TOOLS = Principal("support-tools", "client", "Support and sales tools.", claims=("support", "sales"))
SCHEDULER = Principal("scheduler", "client", "The cycle-close scheduler.", claims=("service", "operator"))
HARDWARE_STORE = Principal("hardware-store", "client", "The hardware store.")
DASHBOARDS = Principal("dashboards", "client", "Operations dashboards.")
PAYMENTS = Principal("payments", "client", "Payments (reads invoices).")
OPERATOR = Principal(
    "operator",
    "operator",
    "The operators' `billing` CLI: closes cycles, reads dead letters and re-publishes one to its original topic, "
    "tails metering.alerts, reads cycle close's answers to its triggers on billing.cycles.",
    claims=("operator",),
)
ADMIN = Principal("admin", "admin", "Creates and describes topics (deploy/provision.py); reads and writes none.")

PRINCIPALS: tuple[Principal, ...] = (
    LICENSE_ORDERS,
    USAGE_METERING,
    CYCLE_CLOSE,
    ALERT_BOARD,
    ACCOUNT_SERVICE,
    ADMIN_UI,
    PROVISIONING,
    TELEPHONY,
    SUPPORT_TOOLS,
    SCHEDULER,
    HARDWARE_STORE,
    DASHBOARDS,
    PAYMENTS,
    OPERATOR,
    ADMIN,
)
BY_PRINCIPAL = {p.name: p for p in PRINCIPALS}
SERVICES = tuple(p for p in PRINCIPALS if p.kind == "service")


@dataclass(frozen=True)
class Access:
    topic: str
    writers: tuple[Principal, ...]
    """The first one is who the contract names first: the tests and the demo send as it."""
    readers: tuple[Principal, ...]


# The contract's topic table (shared spec, contract.md), plus what it leaves to the services:
# metering.usage is usage metering's internal topic for cycle close; cycle close writes its own
# continuations to billing.commands; the alert board reads alerts and closed cycles; the operator
# CLI tails metering.alerts and reads billing.cycles for a refusal of its close trigger. "UIs" are
# the admin UI.
_TABLE: dict[str, tuple[tuple[Principal, ...], tuple[Principal, ...]]] = {
    "platform.accounts": ((ACCOUNT_SERVICE,), (LICENSE_ORDERS, USAGE_METERING, CYCLE_CLOSE)),
    "licensing.commands": ((ADMIN_UI, PROVISIONING), (LICENSE_ORDERS,)),
    "licensing.events": ((LICENSE_ORDERS,), (CYCLE_CLOSE, ADMIN_UI)),
    "usage.calls": ((TELEPHONY,), (USAGE_METERING,)),
    "metering.commands": ((SUPPORT_TOOLS,), (USAGE_METERING,)),
    "metering.alerts": ((USAGE_METERING,), (DASHBOARDS, TELEPHONY, ALERT_BOARD, OPERATOR)),
    "metering.usage": ((USAGE_METERING,), (CYCLE_CLOSE,)),
    "billing.charges": ((HARDWARE_STORE,), (CYCLE_CLOSE,)),
    "billing.commands": ((SCHEDULER, OPERATOR, CYCLE_CLOSE), (CYCLE_CLOSE,)),
    "billing.invoices": ((CYCLE_CLOSE,), (PAYMENTS, ADMIN_UI)),
    "billing.cycles": ((CYCLE_CLOSE,), (LICENSE_ORDERS, USAGE_METERING, ALERT_BOARD, OPERATOR)),
}


def _registry() -> dict[str, Access]:
    if set(_TABLE) != {t.name for t in TOPICS}:
        raise RuntimeError("every topic of contracts.topics needs its writers and readers in contracts.access")
    registry: dict[str, Access] = {}
    for name, (writers, readers) in _TABLE.items():
        if name in COMMAND_TOPICS and len([p for p in readers if p.kind == "service"]) != 1:
            raise RuntimeError(
                f"{name}: a command topic is read by exactly one service, the one its signatures are for "
                "(contracts/signing.md); a second reader needs one signature per reader"
            )
        registry[name] = Access(name, writers, readers)
        # <topic>.dlq: written by any consumer of <topic>, read by operators. The operator re-publishes
        # a dead letter to its original topic, so it may write every topic that has one.
        dlq = BY_NAME[name].dlq
        registry[dlq] = Access(dlq, tuple(p for p in readers if p.kind == "service"), (OPERATOR,))
        if OPERATOR not in writers and any(p.kind == "service" for p in readers):
            registry[name] = Access(name, (*writers, OPERATOR), readers)
    return registry


ACCESS: dict[str, Access] = _registry()


def writes(principal: Principal) -> list[str]:
    return [a.topic for a in ACCESS.values() if principal in a.writers]


def reads(principal: Principal) -> list[str]:
    return [a.topic for a in ACCESS.values() if principal in a.readers]


def writer_of(topic: str) -> Principal:
    """Who a client of the system sends ``topic`` as: the first writer the contract names."""
    return ACCESS[topic].writers[0]


def sender_of(topic: str, role: str | None) -> Principal:
    """Who sends a command claiming ``role`` on ``topic``: the first writer that may claim it (else
    the topic's first writer, whose claim the services then refuse)."""
    return next((p for p in ACCESS[topic].writers if role in p.claims), writer_of(topic))


def trusted_keys(service: Principal) -> dict[str, tuple[str, ...]]:
    """The keys a service trusts, with the roles each may claim: the writers of the command topics
    it reads that sign commands (key id = principal name)."""
    trusted: dict[str, tuple[str, ...]] = {}
    for topic in TOPICS:
        if topic.name in COMMAND_TOPICS and service in ACCESS[topic.name].readers:
            trusted |= {p.name: p.claims for p in ACCESS[topic.name].writers if p.claims}
    return trusted


def receiver_of(topic: str) -> Principal:
    """The one service that reads command topic ``topic``: a sender tags a command with its key
    toward that service (``shared.runtime.authentication``). A command topic read by a second
    service would need one tag per reader; none is, and ``_registry`` refuses one."""
    if topic not in COMMAND_TOPICS:
        raise ValueError(f"{topic} is not a command topic: only commands are signed")
    [service] = [p for p in ACCESS[topic].readers if p.kind == "service"]
    return service


def reader_of(topic: str) -> Principal:
    """Who a client of the system reads ``topic`` as: the first reader that is not a service, else a service."""
    readers = ACCESS[topic].readers
    return next((p for p in readers if p.kind != "service"), readers[0])


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW entry on the broker, in Kafka's own terms (resource type, pattern, operation)."""

    principal: str
    resource_type: Literal["TOPIC", "GROUP", "CLUSTER"]
    resource_name: str
    pattern: Literal["LITERAL", "PREFIXED"]
    operation: str


def acls() -> set[Acl]:
    """Every ACL the broker should hold: nothing else is allowed (super users aside)."""
    entries: set[Acl] = set()
    for access in ACCESS.values():
        for p in access.writers:
            entries |= {Acl(f"User:{p.name}", "TOPIC", access.topic, "LITERAL", op) for op in ("WRITE", "DESCRIBE")}
        for p in access.readers:
            entries |= {Acl(f"User:{p.name}", "TOPIC", access.topic, "LITERAL", op) for op in ("READ", "DESCRIBE")}
    for p in PRINCIPALS:
        if p.kind == "service":  # its one consumer group
            entries.add(Acl(f"User:{p.name}", "GROUP", p.group, "LITERAL", "READ"))
        elif reads(p):  # a client's readers may run several groups, all named after it
            entries.add(Acl(f"User:{p.name}", "GROUP", p.group, "PREFIXED", "READ"))
    for op in ("CREATE", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER", "ALTER_CONFIGS", "DELETE"):
        entries.add(Acl(f"User:{ADMIN.name}", "TOPIC", "*", "LITERAL", op))
    entries.add(Acl(f"User:{ADMIN.name}", "CLUSTER", "kafka-cluster", "LITERAL", "DESCRIBE"))
    return entries
