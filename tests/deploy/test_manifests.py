"""The Kubernetes manifests: generated from the registries and settings, in sync with what is
committed, and every kustomize build valid against the Kubernetes and CRD schemas."""

from __future__ import annotations

import dataclasses
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
