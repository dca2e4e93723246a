"""Sets the broker up from the registries in ``contracts/``; harmless to re-run.

- Access (``contracts.access``), as the stack's super user: a SCRAM-SHA-512 user per principal
  with the stack's generated password (``deploy.credentials``), and exactly the ACLs the registry
  generates (missing ones created, any other ALLOW or DENY entry deleted).
- Topics (``contracts.topics``), as the ``admin`` principal: every topic and its ``.dlq``.

Usage: ``python -m deploy.provision [--bootstrap 127.0.0.1:9092] [--access-only]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts.access import ADMIN, PRINCIPALS, Acl, acls
from contracts.topics import all_topic_names
from deploy import credentials

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# librdkafka calls Kafka's CLUSTER resource type BROKER.
_TO_CONFLUENT = {"CLUSTER": "BROKER"}
_FROM_CONFLUENT = {"BROKER": "CLUSTER"}
SCRAM_ITERATIONS = 8192


def stack_admin(bootstrap: str) -> Any:
    """A confluent-kafka admin client as the stack's super user (aiokafka has no ACL or SCRAM calls)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, **credentials.confluent_options(credentials.STACK_PRINCIPAL)})


def broker_acls(admin: Any) -> set[tuple[Acl, str, str]]:
    """Every ACL the broker holds, as (entry, permission, host)."""
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType
    from confluent_kafka.admin import ResourceType as RT

    every = AclBindingFilter(
        RT.ANY,
        None,  # type: ignore[arg-type]  # None matches any name, principal, host
        ResourcePatternType.ANY,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    return {
        (
            Acl(
                b.principal,
                _FROM_CONFLUENT.get(b.restype.name, b.restype.name),
                b.name,
                b.resource_pattern_type.name,
                b.operation.name,
            ),
            b.permission_type.name,
            b.host,
        )
        for b in admin.describe_acls(every, request_timeout=30).result()
    }


def _binding(acl: Acl, permission: str = "ALLOW", host: str = "*", as_filter: bool = False) -> Any:
    """The confluent-kafka form of an entry (a filter matching exactly it, for deleting)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return (AclBindingFilter if as_filter else AclBinding)(
        ResourceType[_TO_CONFLUENT.get(acl.resource_type, acl.resource_type)],
        acl.resource_name,
        ResourcePatternType[acl.pattern],
        acl.principal,
        host,
        AclOperation[acl.operation],
        AclPermissionType[permission],
    )


def wanted_acls() -> set[tuple[Acl, str, str]]:
    """What the broker must hold, as (entry, permission, host): the registry's ACLs, each an ALLOW
    from any host (Kubernetes' KafkaUsers, deploy/k8s/generate.py, grant the same)."""
    return {(acl, "ALLOW", "*") for acl in acls()}


def grant_access(bootstrap: str) -> tuple[int, int]:
    """SCRAM users for every principal, then the registry's ACLs; returns (ACLs created, deleted)."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    admin = stack_admin(bootstrap)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts = [
        UserScramCredentialUpsertion(p.name, info, credentials.kafka_password(p.name).encode()) for p in PRINCIPALS
    ]
    for future in admin.alter_user_scram_credentials(upserts, request_timeout=30).values():
        future.result()

    wanted = wanted_acls()
    present = broker_acls(admin)
    missing = wanted - present
    extra = present - wanted
    if missing:
        for future in admin.create_acls([_binding(*entry) for entry in missing], request_timeout=30).values():
            future.result()
    if extra:
        for future in admin.delete_acls(
            [_binding(*entry, as_filter=True) for entry in extra], request_timeout=30
        ).values():
            future.result()
    return len(missing), len(extra)


# Kafka keeps a record 7 days: a reread from the start reaches back no further, which is what lets
# the inbox forget processed ids after BILLING_INBOX_RETENTION_DAYS (30; docs/architecture.md).
TOPIC_RETENTION_MS = 7 * 24 * 3600 * 1000


async def create_topics(bootstrap: str, timeout_s: float = 60.0) -> list[str]:
    """Every topic of the registry that is missing, created as the ``admin`` principal."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=10000, **credentials.kafka_options(ADMIN.name)
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(name, n, 1, topic_configs={"retention.ms": str(TOPIC_RETENTION_MS)})
                for name, n in all_topic_names()
                if name not in existing
            ]
            if wanted:
                await admin.create_topics(wanted)
            return [t.name for t in wanted]
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1)
        finally:
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("BILLING_KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP))
    parser.add_argument("--access-only", action="store_true", help="users and ACLs, no topics")
    args = parser.parse_args()
    created, deleted = grant_access(args.bootstrap)
    print(f"access: {len(PRINCIPALS)} principals, {len(acls())} ACLs ({created} created, {deleted} deleted)")
    if args.access_only:
        return
    made = asyncio.run(create_topics(args.bootstrap))
    print(f"topics: {len(made)} created, {len(all_topic_names()) - len(made)} already there")


if __name__ == "__main__":
    main()
