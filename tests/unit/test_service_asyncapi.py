"""Each service's AsyncAPI document (docs/asyncapi/<service>.json) is what its app generates."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest


@pytest.mark.parametrize("service", ["license_orders", "usage_metering", "cycle_close", "alert_board"])
def test_the_committed_service_document_is_what_the_service_generates(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The document names the default broker, whatever broker this stack's tests point at.
    monkeypatch.delenv("BILLING_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    app = importlib.import_module(f"services.{service}.app").create_app()
    generated = json.loads(json.dumps(app.schema.to_specification().to_jsonable()))
    committed = json.loads((Path(__file__).parents[2] / "docs" / "asyncapi" / f"{service}.json").read_text())
    assert generated == committed, (
        f"run: faststream docs gen services.{service}.app:create_app --factory --out docs/asyncapi/{service}.json"
    )
