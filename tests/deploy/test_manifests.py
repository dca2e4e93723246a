"""The Kubernetes manifests: generated from the registries and settings, in sync with what is
committed, and every kustomize build valid against the Kubernetes and CRD schemas."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from contracts.topics import BY_NAME, DLQ_PARTITIONS, TOPICS
from deploy.k8s import generate, validate

BASE = Path(generate.__file__).parent / "base"


def committed(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def test_the_committed_base_is_what_the_generator_writes() -> None:
    wanted = generate.files()
    on_disk = {p.name: p.read_text() for p in BASE.glob("*.yaml")}

    assert sorted(on_disk) == sorted(wanted), "run: python -m deploy.k8s.generate"
    stale = [name for name in wanted if on_disk[name] != wanted[name]]
    assert stale == [], "run: python -m deploy.k8s.generate"


def test_the_kafka_topics_have_the_registrys_partition_counts() -> None:
    topics = {d["spec"]["topicName"]: d["spec"]["partitions"] for d in committed("kafka-topics.yaml")}
    scaled = next(d for d in committed("usage-metering-scaling.yaml") if d["kind"] == "ScaledObject")

    assert topics == {
        **{t.name: t.partitions for t in TOPICS},
        **{t.dlq: DLQ_PARTITIONS for t in TOPICS},
    }
    assert scaled["spec"]["maxReplicaCount"] == BY_NAME["usage.calls"].partitions


def test_a_partition_count_changed_only_in_the_registry_makes_the_committed_files_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = dataclasses.replace(BY_NAME["usage.calls"], partitions=BY_NAME["usage.calls"].partitions + 4)
    monkeypatch.setattr(generate, "TOPICS", tuple(calls if t.name == calls.name else t for t in TOPICS))
    monkeypatch.setattr(generate, "BY_NAME", {**BY_NAME, calls.name: calls})

    wanted = generate.files()
    stale = sorted(name for name, text in wanted.items() if (BASE / name).read_text() != text)

    assert stale == ["kafka-topics.yaml", "usage-metering-scaling.yaml"]


def test_a_setting_the_services_do_not_have_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(generate.COMMON_SETTINGS, "BILLING_KAFKA_BOOTSTRAP", "kafka:9092")

    with pytest.raises(SystemExit, match="BILLING_KAFKA_BOOTSTRAP"):
        generate.files()


@pytest.mark.skipif(not (shutil.which("kubectl") or shutil.which("kustomize")), reason="needs kubectl or kustomize")
@pytest.mark.parametrize("build", validate.builds(), ids=lambda p: p.name)
def test_every_kustomize_build_is_valid_against_the_schemas(build: Path) -> None:
    text = validate.kustomize(build)
    kinds = {d["kind"] for d in yaml.safe_load_all(text) if d}

    assert list(validate.problems(text, validate.crd_schemas())) == []
    assert {"Deployment", "PodDisruptionBudget", "KafkaTopic", "KafkaUser", "ScaledObject", "ConfigMap"} <= kinds


def _pod_spec(document: dict) -> dict:
    spec = document["spec"]
    return (
        spec["jobTemplate"]["spec"]["template"]["spec"] if document["kind"] == "CronJob" else spec["template"]["spec"]
    )


def _settings_of(name: str) -> dict[str, str]:
    return next(d["data"] for d in committed("settings.yaml") if d["metadata"]["name"] == f"{name}-settings")


def test_exactly_the_workers_that_read_commands_mount_their_registry_of_trusted_keys() -> None:
    mounting = set()
    for worker in generate.WORKERS:
        pod = _pod_spec(next(d for d in committed(f"{worker.name}.yaml") if d["kind"] == "Deployment"))
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        if "trusted-keys" in volumes:
            mounting.add(worker.name)
            # A secret: the senders' keys toward this worker; readable by its group only (fsGroup).
            assert volumes["trusted-keys"]["secret"]["secretName"] == f"{worker.name}-trusted-keys"
            assert volumes["trusted-keys"]["secret"]["defaultMode"] == 0o440
            assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
            assert mounts["trusted-keys"]["readOnly"] is True
            path = _settings_of(worker.name)["BILLING_TRUSTED_KEYS_FILE"]
            assert path == f"{mounts['trusted-keys']['mountPath']}/trusted-keys.json"
        else:
            assert "BILLING_TRUSTED_KEYS_FILE" not in _settings_of(worker.name)
    reading = {
        w.name for w in generate.WORKERS if importlib.import_module(f"{w.module}.settings").Settings.reads_commands
    }

    assert mounting == reading == {"license-orders", "usage-metering", "cycle-close"}


def test_the_in_cluster_signers_mount_their_own_signing_key() -> None:
    signers = {}
    for name in [*(w.name for w in generate.WORKERS), "close-cycles"]:
        document = next(d for d in committed(f"{name}.yaml") if d["kind"] in ("Deployment", "CronJob"))
        pod = _pod_spec(document)
        volumes = {v["name"]: v for v in pod["volumes"]}
        if "signing-key" not in volumes:
            continue
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if document["kind"] == "Deployment":
            env |= _settings_of(name)
        mount = next(m for m in container["volumeMounts"] if m["name"] == "signing-key")
        assert mount["readOnly"] is True
        assert env["BILLING_SIGNING_KEY_FILE"] == f"{mount['mountPath']}/signing-key"
        assert volumes["signing-key"]["secret"]["defaultMode"] == 0o440
        signers[name] = (env["BILLING_SIGNING_KEY_ID"], volumes["signing-key"]["secret"]["secretName"])

    assert signers == {
        "cycle-close": ("cycle-close", "cycle-close-signing-key"),
        "close-cycles": ("scheduler", "scheduler-signing-key"),
    }


def test_the_generator_refuses_a_command_reading_worker_without_its_trusted_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unmounted = tuple(
        dataclasses.replace(w, reads_commands=False) if w.name == "usage-metering" else w for w in generate.WORKERS
    )
    monkeypatch.setattr(generate, "WORKERS", unmounted)

    with pytest.raises(SystemExit, match="usage-metering reads commands: it needs BILLING_TRUSTED_KEYS_FILE"):
        generate.files()


def test_the_cronjobs_environment_makes_the_scheduler_a_signer_in_production() -> None:
    from billing_cli.settings import CliSettings

    cronjob = committed("close-cycles.yaml")[0]
    container = _pod_spec(cronjob)["containers"][0]
    env = {**next(d["data"] for d in committed("settings.yaml") if d["metadata"]["name"] == "billing-settings")}
    env |= {e["name"]: e.get("value") or "a-real-password" for e in container["env"]}

    settings = CliSettings.model_validate({k.removeprefix("BILLING_").lower(): v for k, v in env.items()})

    assert (settings.signing_key_id, settings.signing_key_file) == (
        "scheduler",
        "/etc/billing/signing-key/signing-key",
    )
