"""The access registry: the contract's topic table as data, and the ACLs generated from it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from contracts.access import ACCESS, BY_PRINCIPAL, PRINCIPALS, SERVICES, Acl, acls, reads, sender_of, writes
from contracts.topics import TOPICS

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "contract.md"
# The spec's words for each party, as they stand in its topic table.
SPEC_NAMES = {
    "account service (platform)": {"account-service"},
    "admin UI, provisioning": {"admin-ui", "provisioning"},
    "license orders": {"license-orders"},
    "cycle close, UIs": {"cycle-close", "admin-ui"},
    "telephony platform": {"telephony"},
    "usage metering": {"usage-metering"},
    "support / sales tools": {"support-tools"},
    "operations dashboards, telephony": {"dashboards", "telephony"},
    "hardware store": {"hardware-store"},
    "cycle close": {"cycle-close"},
    "scheduler, operators": {"scheduler", "operator"},
    "payments, UIs": {"payments", "admin-ui"},
    "license orders, usage metering": {"license-orders", "usage-metering"},
    "all three services": {"license-orders", "usage-metering", "cycle-close"},
}


def test_every_topic_and_its_dead_letters_have_writers_and_readers_in_the_registry() -> None:
    for topic in TOPICS:
        assert ACCESS[topic.name].writers and ACCESS[topic.name].readers
        assert ACCESS[topic.dlq].readers == (BY_PRINCIPAL["operator"],)
        services = {p for p in ACCESS[topic.name].readers if p.kind == "service"}
        assert set(ACCESS[topic.dlq].writers) == services  # who consumes a topic writes its dead letters


@pytest.mark.skipif(not SPEC.exists(), reason="the shared spec is not beside this checkout")
def test_the_registry_gives_everyone_the_contract_table_gives_them() -> None:
    """Each row of the spec's topic table is in the registry; the registry only adds what the
    services need of each other (documented in contracts/access.py) and the operator CLI."""
    rows = [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        for line in SPEC.read_text().splitlines()
        if line.startswith("| `") and "." in line.split("|")[1]
    ]
    table = {topic: (SPEC_NAMES[w], SPEC_NAMES[r]) for topic, w, r in rows if not topic.startswith("<")}
    assert set(table) == {t.name for t in TOPICS} - {"metering.usage"}
    for topic, (writers, readers) in table.items():
        assert writers <= {p.name for p in ACCESS[topic].writers}, topic
        assert readers <= {p.name for p in ACCESS[topic].readers}, topic


@pytest.mark.parametrize("service", ["license_orders", "usage_metering", "cycle_close"])
def test_a_service_may_read_what_it_subscribes_to_and_write_what_it_declares(service: str) -> None:
    app = importlib.import_module(f"services.{service}.app")
    worker = app.create_worker()
    principal = BY_PRINCIPAL[app.SERVICE]
    subscribed = {t.name for s in worker.broker.subscribers for t in s.topics}
    published = {p.topic for p in worker.broker.publishers}
    assert subscribed <= set(reads(principal))
    assert published <= set(writes(principal))
    assert {f"{t}.dlq" for t in subscribed} <= set(writes(principal))


def test_a_service_reads_with_its_own_group_only_and_clients_under_their_own_prefix() -> None:
    groups = {(a.principal, a.resource_name, a.pattern) for a in acls() if a.resource_type == "GROUP"}
    for service in SERVICES:
        assert (f"User:{service.name}", service.name, "LITERAL") in groups
    assert ("User:dashboards", "dashboards", "PREFIXED") in groups
    assert not any(p == "User:account-service" for p, _, _ in groups)  # it reads nothing


def test_telephony_may_write_calls_only_and_the_admin_writes_no_topic() -> None:
    telephony = {(a.resource_name, a.operation) for a in acls() if a.principal == "User:telephony"}
    assert {t for t, op in telephony if op == "WRITE"} == {"usage.calls"}
    assert {t for t, op in telephony if op == "READ"} == {"metering.alerts", "telephony"}  # topic, group
    admin = [a for a in acls() if a.principal == "User:admin"]
    assert not any(a.operation in ("READ", "WRITE") for a in admin)
    assert Acl("User:admin", "TOPIC", "*", "LITERAL", "CREATE") in admin


def test_a_command_is_sent_as_the_client_whose_key_may_claim_its_role() -> None:
    assert sender_of("licensing.commands", "office_admin").name == "admin-ui"
    assert sender_of("licensing.commands", "service").name == "provisioning"
    assert sender_of("billing.commands", "operator").name == "scheduler"
    assert sender_of("metering.commands", "sales").name == "support-tools"
    assert sender_of("metering.commands", "office_admin").name == "support-tools"  # its claim is then refused
    assert all(p.name == p.name.lower() for p in PRINCIPALS)
