"""Writes the kustomize base under deploy/k8s/base from the project's registries and settings.

``python -m deploy.k8s.generate`` rewrites the files; ``--check`` only says which differ (a test
runs it). What comes from where:

- the Strimzi ``KafkaTopic`` resources: ``contracts.topics`` (partition counts included);
- the Strimzi ``KafkaUser`` resources: ``contracts.access``, one per principal, SCRAM-SHA-512 with
  exactly the ACLs ``contracts.access.acls()`` gives it (what ``deploy/provision.py`` applies to
  the local stack's broker); the User Operator writes each one's password to a Secret of its name,
  which the Deployments read;
- the KEDA ``ScaledObject`` of usage metering: its ceiling is the partition count of ``usage.calls``;
- every ``BILLING_*`` variable the Deployments set is checked against ``shared.settings``: a setting
  renamed there fails the generation, a new secret setting (``SecretStr``) needs a source here, and
  a worker whose settings read commands (``reads_commands``) needs its registry of trusted keys;
- signed commands: each worker that reads commands mounts the Secret ``<worker>-trusted-keys``
  (``trusted-keys.json``: the senders' keys toward it, a secret), each in-cluster signer (a
  principal with ``claims``: cycle close for its continuations, the scheduler's CronJob) the Secret
  ``<principal>-signing-key`` (``signing-key``, its master secret); both are made from
  ``python -m deploy.credentials ensure`` (docs/deploy.md).

The overlays (deploy/k8s/overlays/) are written by hand and patch what differs per environment.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from contracts.access import BY_PRINCIPAL, PRINCIPALS, acls
from contracts.topics import BY_NAME, DLQ_PARTITIONS, TOPICS

BASE = Path(__file__).resolve().parent / "base"
PART_OF = "license-billing"
IMAGE = "license-billing"
KAFKA_CLUSTER = "billing"
"""The Strimzi ``Kafka`` resource's name (the platform team's; its bootstrap service follows from it)."""
KAFKA_BOOTSTRAP = f"{KAFKA_CLUSTER}-kafka-bootstrap:9093"
KAFKA_CA_SECRET = f"{KAFKA_CLUSTER}-cluster-ca-cert"
"""Strimzi's cluster CA certificate (key ``ca.crt``), mounted for the TLS listener."""
KAFKA_CA_DIR = "/etc/billing/kafka-ca"
TRUSTED_KEYS_DIR = "/etc/billing/trusted-keys"
TRUSTED_KEYS_NAME = "trusted-keys.json"
SIGNING_KEY_DIR = "/etc/billing/signing-key"
SIGNING_KEY_NAME = "signing-key"
METRICS_PORT = 9100
BOARD_PORT = 8800
TOPIC_REPLICAS = 3
CALLS_LAG_PER_REPLICA = 20_000
"""Calls waiting per metering replica before KEDA adds one: about 1-2 s of one replica's work at
the rates in docs/benchmarks.md (docs/scaling.md)."""


@dataclass(frozen=True)
class Worker:
    name: str
    """The service's principal: Deployment, consumer group, Kafka user and database role."""
    module: str
    replicas: int
    cpu: str
    memory: str
    settings: dict[str, str] = field(default_factory=dict)
    web_port: int | None = None
    reads_commands: bool = True
    """It consumes a command topic: it mounts its registry of trusted keys (the generator checks
    this against its settings' ``reads_commands``)."""


SCHEDULER = "scheduler"
"""The cycle-close scheduler's principal (its Kafka user sends the daily trigger)."""
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY = {
    "automountServiceAccountToken": False,
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,  # the key Secrets' volumes are readable by the group only
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}
VOLUMES = [
    {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    {"name": "kafka-ca", "secret": {"secretName": KAFKA_CA_SECRET, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
]

WORKERS: tuple[Worker, ...] = (
    Worker("license-orders", "services.license_orders", 2, "250m", "256Mi"),
    Worker("usage-metering", "services.usage_metering", 2, "1", "512Mi"),
    Worker("cycle-close", "services.cycle_close", 2, "500m", "512Mi"),
    Worker(
        "alert-board",
        "services.alert_board",
        2,
        "250m",
        "256Mi",
        {"BILLING_BOARD_HOST": "0.0.0.0", "BILLING_BOARD_PORT": str(BOARD_PORT)},
        web_port=BOARD_PORT,
        reads_commands=False,
    ),
)
BY_WORKER = {w.name: w for w in WORKERS}
SCALED_BY_LAG = "usage-metering"

# What every worker sets; the rest keeps the settings' defaults.
COMMON_SETTINGS = {
    "BILLING_ENVIRONMENT": "production",
    "BILLING_LOG_FORMAT": "json",
    "BILLING_KAFKA_BOOTSTRAP_SERVERS": KAFKA_BOOTSTRAP,
    "BILLING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "BILLING_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "BILLING_KAFKA_SSL_CAFILE": f"{KAFKA_CA_DIR}/ca.crt",
    "BILLING_DATABASE_PORT": "5432",
    "BILLING_METRICS_PORT": str(METRICS_PORT),
    "BILLING_METRICS_HOST": "0.0.0.0",
}


def signs_commands(principal: str) -> bool:
    """Whether the principal sends signed commands (it may claim a role), so needs its key."""
    return bool(BY_PRINCIPAL[principal].claims)


def trusted_keys_secret(worker: Worker) -> str:
    """The Secret holding ``trusted-keys.json``, the registry of the keys the worker believes (the
    senders' keys toward it: whoever reads it could sign toward this worker)."""
    return f"{worker.name}-trusted-keys"


def signing_key_secret(principal: str) -> str:
    """The Secret holding ``signing-key``, the principal's master secret (32 bytes)."""
    return f"{principal}-signing-key"


def signing_settings(principal: str) -> dict[str, str]:
    return {
        "BILLING_SIGNING_KEY_FILE": f"{SIGNING_KEY_DIR}/{SIGNING_KEY_NAME}",
        "BILLING_SIGNING_KEY_ID": principal,
    }


def worker_settings(worker: Worker) -> dict[str, str]:
    """A worker's own: its Kafka user, its database (each service its own PostgreSQL), its keys,
    its extras."""
    settings = {
        "BILLING_KAFKA_SASL_USERNAME": worker.name,
        "BILLING_DATABASE_HOST": f"{worker.name}-db-rw",
        "BILLING_DATABASE_NAME": BY_PRINCIPAL[worker.name].database or "",
    }
    if worker.reads_commands:
        settings["BILLING_TRUSTED_KEYS_FILE"] = f"{TRUSTED_KEYS_DIR}/{TRUSTED_KEYS_NAME}"
    if signs_commands(worker.name):
        settings |= signing_settings(worker.name)
    return settings | worker.settings


def key_volumes(worker: Worker | None, signer: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The volumes and mounts of the worker's registry of trusted keys and of the signer's key."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if worker is not None and worker.reads_commands:
        items = [{"key": TRUSTED_KEYS_NAME, "path": TRUSTED_KEYS_NAME}]
        registry = {"secretName": trusted_keys_secret(worker), "items": items, "defaultMode": 0o440}
        volumes.append({"name": "trusted-keys", "secret": registry})
        mounts.append({"name": "trusted-keys", "mountPath": TRUSTED_KEYS_DIR, "readOnly": True})
    if signer is not None and signs_commands(signer):
        items = [{"key": SIGNING_KEY_NAME, "path": SIGNING_KEY_NAME}]
        secret = {"secretName": signing_key_secret(signer), "items": items, "defaultMode": 0o440}
        volumes.append({"name": "signing-key", "secret": secret})
        mounts.append({"name": "signing-key", "mountPath": SIGNING_KEY_DIR, "readOnly": True})
    return volumes, mounts


def database_secret(worker: Worker) -> str:
    """The Secret holding the worker's database role and password: what CloudNativePG writes for a
    ``Cluster`` named ``<worker>-db`` whose ``bootstrap.initdb`` makes the service's database owned
    by a role of the same name (keys ``username`` and ``password``; any operator's Secret of that
    name and shape does)."""
    return f"{worker.name}-db-app"


def secret_sources(worker: Worker) -> dict[str, tuple[str, str]]:
    """Each setting that comes from a Secret, and the (Secret, key) it comes from. The Kafka
    password is the one the Strimzi User Operator writes for the worker's ``KafkaUser`` (Secret
    ``<worker>``, key ``password``); the database role and its password are the worker's own
    database's (``database_secret``). Each worker reads only its own two Secrets."""
    return {
        "BILLING_KAFKA_SASL_PASSWORD": (worker.name, "password"),
        "BILLING_DATABASE_USER": (database_secret(worker), "username"),
        "BILLING_DATABASE_PASSWORD": (database_secret(worker), "password"),
    }


def _check_against_settings() -> None:
    for worker in WORKERS:
        settings = importlib.import_module(f"{worker.module}.settings").Settings
        names = {f"BILLING_{n.upper()}" for n in settings.model_fields}
        unknown = sorted({*COMMON_SETTINGS, *worker_settings(worker), *secret_sources(worker)} - names)
        if unknown:
            raise SystemExit(f"deploy/k8s/generate.py sets {unknown}, which {worker.module}.settings does not have")
        secrets = {
            f"BILLING_{n.upper()}" for n, f in settings.model_fields.items() if SecretStr in _types(f.annotation)
        }
        missing = sorted(secrets - set(secret_sources(worker)))
        if missing:
            raise SystemExit(f"secret settings {missing} need a Secret in deploy/k8s/generate.py (secret_sources)")
        # A path, not a SecretStr: without it production refuses to start (shared/settings.py).
        if settings.reads_commands and "BILLING_TRUSTED_KEYS_FILE" not in worker_settings(worker):
            raise SystemExit(
                f"{worker.name} reads commands: it needs BILLING_TRUSTED_KEYS_FILE and its {TRUSTED_KEYS_NAME} "
                "mounted (Worker.reads_commands in deploy/k8s/generate.py)"
            )


def _types(annotation: Any) -> set[Any]:
    args = getattr(annotation, "__args__", None)
    return {annotation} if not args else {t for a in args for t in _types(a)}


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def settings_configmaps() -> list[dict[str, Any]]:
    maps = [_configmap("billing-settings", COMMON_SETTINGS, PART_OF)]
    maps += [_configmap(f"{w.name}-settings", worker_settings(w), w.name) for w in WORKERS]
    return maps


def _configmap(name: str, data: dict[str, str], app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": _labels(app)},
        "data": dict(sorted(data.items())),
    }


def deployment(worker: Worker) -> dict[str, Any]:
    probe_port = {"port": "metrics"}
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    if worker.web_port:
        ports.append({"name": "web", "containerPort": worker.web_port})
    volumes, mounts = key_volumes(worker, worker.name)
    container = {
        "name": "worker",
        "image": IMAGE,
        "command": ["python", "-m", worker.module],
        "envFrom": [
            {"configMapRef": {"name": "billing-settings"}},
            {"configMapRef": {"name": f"{worker.name}-settings"}},
        ],
        "env": [
            {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
            for env, (secret, key) in secret_sources(worker).items()
        ],
        "ports": ports,
        # Start-up waits for the database and migrates it (docs/scaling.md): /healthz answers meanwhile.
        "startupProbe": {"httpGet": {"path": "/healthz", **probe_port}, "periodSeconds": 2, "failureThreshold": 90},
        "livenessProbe": {"httpGet": {"path": "/healthz", **probe_port}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", **probe_port}, "periodSeconds": 5, "failureThreshold": 2},
        "resources": {
            "requests": {"cpu": worker.cpu, "memory": worker.memory},
            "limits": {"memory": worker.memory},
        },
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True},
            *mounts,
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": worker.name, "labels": _labels(worker.name)},
        "spec": {
            "replicas": worker.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": worker.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(worker.name)},
                "spec": {
                    **POD_SECURITY,
                    # SIGTERM: the worker commits its last offsets and stops its relay (well under 30 s).
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": VOLUMES + volumes,
                },
            },
        },
    }


def pod_disruption_budget(worker: Worker) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": worker.name, "labels": _labels(worker.name)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": worker.name}}},
    }


def service(worker: Worker) -> dict[str, Any]:
    ports = [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]
    if worker.web_port:
        ports.append({"name": "web", "port": 80, "targetPort": "web"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": worker.name, "labels": _labels(worker.name)},
        "spec": {"selector": {"app.kubernetes.io/name": worker.name}, "ports": ports},
    }


def kafka_topics() -> list[dict[str, Any]]:
    topics = []
    for topic in TOPICS:
        for name, partitions in ((topic.name, topic.partitions), (topic.dlq, DLQ_PARTITIONS)):
            topics.append(
                {
                    "apiVersion": "kafka.strimzi.io/v1",
                    "kind": "KafkaTopic",
                    # Kubernetes names take no dots' meaning; topicName keeps the real one.
                    "metadata": {"name": name.replace(".", "-"), "labels": {"strimzi.io/cluster": KAFKA_CLUSTER}},
                    "spec": {
                        "topicName": name,
                        "partitions": partitions,
                        "replicas": TOPIC_REPLICAS,
                        "config": {"min.insync.replicas": 2},
                    },
                }
            )
    return topics


# Kafka's names for what an ACL grants (contracts.access.Acl) and Strimzi's for the same.
STRIMZI_OPERATIONS = {
    "READ": "Read",
    "WRITE": "Write",
    "DESCRIBE": "Describe",
    "CREATE": "Create",
    "DELETE": "Delete",
    "ALTER": "Alter",
    "ALTER_CONFIGS": "AlterConfigs",
    "DESCRIBE_CONFIGS": "DescribeConfigs",
}
STRIMZI_RESOURCES = {"TOPIC": "topic", "GROUP": "group", "CLUSTER": "cluster"}
STRIMZI_PATTERNS = {"LITERAL": "literal", "PREFIXED": "prefix"}


def kafka_users() -> list[dict[str, Any]]:
    """A SCRAM-SHA-512 ``KafkaUser`` per principal of contracts/access.py, allowed exactly what the
    registry's ACLs give it (a rule per resource, with its operations). Strimzi's User Operator
    makes the SCRAM user, a Secret of the same name holding its generated ``password``, and the
    ACLs; the cluster's ``Kafka`` resource needs ``authorization: {type: simple}`` and a
    ``scram-sha-512`` listener."""
    by_user: dict[str, dict[tuple[str, str, str], set[str]]] = {}
    for acl in acls():
        key = (acl.resource_type, acl.resource_name, acl.pattern)
        by_user.setdefault(acl.principal.removeprefix("User:"), {}).setdefault(key, set()).add(acl.operation)
    users = []
    for principal in PRINCIPALS:
        rules = []
        for (kind, name, pattern), operations in sorted(by_user.get(principal.name, {}).items()):
            resource: dict[str, str] = {"type": STRIMZI_RESOURCES[kind]}
            if kind != "CLUSTER":  # Strimzi's cluster resource has no name: it is this cluster
                resource |= {"name": name, "patternType": STRIMZI_PATTERNS[pattern]}
            rules.append(
                {
                    "type": "allow",
                    "resource": resource,
                    "operations": sorted(STRIMZI_OPERATIONS[op] for op in operations),
                    "host": "*",
                }
            )
        users.append(
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "KafkaUser",
                "metadata": {
                    "name": principal.name,
                    "labels": {"strimzi.io/cluster": KAFKA_CLUSTER, **_labels(principal.name)},
                },
                "spec": {
                    "authentication": {"type": "scram-sha-512"},
                    "authorization": {"type": "simple", "acls": rules},
                },
            }
        )
    return users


def scaled_object() -> list[dict[str, Any]]:
    worker = BY_WORKER[SCALED_BY_LAG]
    calls = BY_NAME["usage.calls"]
    auth_name = f"{worker.name}-kafka"
    return [
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "TriggerAuthentication",
            "metadata": {"name": auth_name, "labels": _labels(worker.name)},
            "spec": {
                # The worker's own Kafka user (its group's offsets are what KEDA reads).
                "configMapTargetRef": [
                    {"parameter": "username", "name": f"{worker.name}-settings", "key": "BILLING_KAFKA_SASL_USERNAME"}
                ],
                "secretTargetRef": [
                    {"parameter": "password", "name": worker.name, "key": "password"},
                    {"parameter": "ca", "name": KAFKA_CA_SECRET, "key": "ca.crt"},
                ],
            },
        },
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": worker.name, "labels": _labels(worker.name)},
            "spec": {
                "scaleTargetRef": {"name": worker.name},
                "minReplicaCount": worker.replicas,
                # A replica past the partition count would get no partition of usage.calls.
                "maxReplicaCount": calls.partitions,
                "triggers": [
                    {
                        "type": "kafka",
                        "metadata": {
                            "bootstrapServers": KAFKA_BOOTSTRAP,
                            "consumerGroup": worker.name,
                            "topic": calls.name,
                            "lagThreshold": str(CALLS_LAG_PER_REPLICA),
                            "offsetResetPolicy": "earliest",
                            "allowIdleConsumers": "false",
                            "sasl": "scram_sha512",
                            "tls": "enable",
                        },
                        "authenticationRef": {"name": auth_name},
                    }
                ],
            },
        },
    ]


def close_cycles_cronjob() -> dict[str, Any]:
    """The scheduler: every day, close every cycle that ended by that day (a cycle ends on any
    billing day, and a repeated trigger closes nothing twice). It only sends the trigger, as the
    scheduler's own Kafka user, signed with the scheduler's key; cycle close does the work."""
    volumes, mounts = key_volumes(None, SCHEDULER)
    container = {
        "name": "trigger",
        "image": IMAGE,
        "command": [
            "sh",
            "-c",
            'exec billing close-cycles --as-of "$(date -u +%F)" --role service --actor scheduler --no-wait',
        ],
        "envFrom": [{"configMapRef": {"name": "billing-settings"}}],
        "env": [
            {"name": "BILLING_KAFKA_SASL_USERNAME", "value": SCHEDULER},
            {
                "name": "BILLING_KAFKA_SASL_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": SCHEDULER, "key": "password"}},
            },
            *({"name": k, "value": v} for k, v in signing_settings(SCHEDULER).items()),
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True},
            *mounts,
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "close-cycles", "labels": _labels("close-cycles")},
        "spec": {
            "schedule": "15 0 * * *",
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 3,
                    "template": {
                        "metadata": {"labels": _labels("close-cycles")},
                        "spec": {
                            **POD_SECURITY,
                            "restartPolicy": "OnFailure",
                            "containers": [container],
                            "volumes": VOLUMES + volumes,
                        },
                    },
                }
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a shared dict (security contexts, volumes) is written out in full every time


def files() -> dict[str, str]:
    """Every generated file under base/, by name, as its text."""
    _check_against_settings()
    documents: dict[str, list[dict[str, Any]]] = {"settings.yaml": settings_configmaps()}
    for worker in WORKERS:
        documents[f"{worker.name}.yaml"] = [deployment(worker), pod_disruption_budget(worker), service(worker)]
    documents["kafka-topics.yaml"] = kafka_topics()
    documents["kafka-users.yaml"] = kafka_users()
    documents["usage-metering-scaling.yaml"] = scaled_object()
    documents["close-cycles.yaml"] = [close_cycles_cronjob()]
    header = "# Generated by `python -m deploy.k8s.generate` from contracts/ and shared/settings.py: edit those.\n"
    out = {
        name: header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120)
        for name, docs in documents.items()
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/part-of": PART_OF}}],
        "resources": sorted(out),
    }
    out["kustomization.yaml"] = header + yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args()
    wanted = files()
    stale = [n for n, text in wanted.items() if not (BASE / n).exists() or (BASE / n).read_text() != text]
    extra = sorted(p.name for p in BASE.glob("*.yaml") if p.name not in wanted) if BASE.exists() else []
    if args.check:
        if stale or extra:
            print(f"deploy/k8s/base is stale ({', '.join(stale + extra)}): run python -m deploy.k8s.generate")
            sys.exit(1)
        return
    BASE.mkdir(parents=True, exist_ok=True)
    for name in extra:
        (BASE / name).unlink()
    for name in stale:
        (BASE / name).write_text(wanted[name])
    print(f"deploy/k8s/base: {len(stale)} written, {len(extra)} removed, {len(wanted) - len(stale)} unchanged")


if __name__ == "__main__":
    main()
