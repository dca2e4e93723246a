"""Kubernetes' KafkaUsers grant what the local stack's broker is given: the same registry, the
same ACLs (deploy/k8s/generate.py against deploy/provision.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from contracts.access import PRINCIPALS, SERVICES, Acl
from deploy.k8s import generate
from deploy.provision import wanted_acls

# Strimzi's words, read back into Kafka's (the AclOperation and ResourcePatternType names), on
# their own here so that a wrong mapping in the generator cannot cancel itself out.
PATTERNS = {"literal": "LITERAL", "prefix": "PREFIXED"}


def kafka_operation(strimzi: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", strimzi).upper()  # DescribeConfigs -> DESCRIBE_CONFIGS


def granted(users: list[dict[str, Any]]) -> set[tuple[Acl, str, str]]:
    """(entry, permission, host) for every operation of every rule, as provision keeps them."""
    entries = set()
    for user in users:
        for rule in user["spec"]["authorization"]["acls"]:
            resource = rule["resource"]
            kind: Any = resource["type"].upper()
            pattern: Any = "LITERAL"
            if kind == "CLUSTER":  # Strimzi's cluster resource is Kafka's kafka-cluster
                name = "kafka-cluster"
            else:
                name, pattern = resource["name"], PATTERNS[resource.get("patternType", "literal")]
            for operation in rule["operations"]:
                acl = Acl(f"User:{user['metadata']['name']}", kind, name, pattern, kafka_operation(operation))
                entries.add((acl, rule.get("type", "allow").upper(), rule.get("host", "*")))
    return entries


def test_the_kafka_users_grant_exactly_what_provision_applies_to_the_broker() -> None:
    users = generate.kafka_users()

    assert granted(users) == wanted_acls()


def test_one_scram_kafka_user_per_principal_in_the_strimzi_cluster() -> None:
    users = generate.kafka_users()

    assert [u["metadata"]["name"] for u in users] == [p.name for p in PRINCIPALS]
    for user in users:
        assert user["kind"] == "KafkaUser" and user["apiVersion"] == "kafka.strimzi.io/v1"
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == generate.KAFKA_CLUSTER
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"]["type"] == "simple"


def test_an_acl_added_to_the_registry_shows_in_the_kafka_users(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = Acl("User:payments", "TOPIC", "billing.charges", "LITERAL", "READ")
    registry = {acl for acl, _, _ in wanted_acls()} | {extra}
    monkeypatch.setattr(generate, "acls", lambda: registry)

    assert {acl for acl, _, _ in granted(generate.kafka_users())} == registry


def test_each_worker_takes_its_credentials_from_its_own_secrets() -> None:
    for worker in generate.WORKERS:
        [container] = generate.deployment(worker)["spec"]["template"]["spec"]["containers"]
        from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        database = next(p.database for p in SERVICES if p.name == worker.name)

        assert from_secrets == {
            "BILLING_KAFKA_SASL_PASSWORD": {"name": worker.name, "key": "password"},  # its KafkaUser's Secret
            "BILLING_DATABASE_USER": {"name": f"{worker.name}-db-app", "key": "username"},
            "BILLING_DATABASE_PASSWORD": {"name": f"{worker.name}-db-app", "key": "password"},
        }
        assert generate.worker_settings(worker)["BILLING_KAFKA_SASL_USERNAME"] == worker.name
        assert generate.worker_settings(worker)["BILLING_DATABASE_NAME"] == database
