"""The ``billing`` command's surface without the stack: help on every level, bad usage exits 2."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from billing_cli.app import app
from billing_cli.output import jsonable

runner = CliRunner()


def command_paths() -> list[list[str]]:
    """Every group and command of the app, as the words an operator types."""
    paths: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():  # a group's commands
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_group_and_command_is_listed() -> None:
    names = {" ".join(p) for p in command_paths()}
    assert {"close-cycles", "prices", "account", "invoice", "invoices", "alerts tail", "dlq list", "dlq show"} <= names


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "billing")
def test_help_works_on_every_level(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--help" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["close-cycles"],  # --as-of is required
        ["close-cycles", "--as-of", "December"],
        ["prices", "user"],  # a product without a price
        ["prices", "user", "15.001"],
        ["prices", "user", "-1"],
        ["invoice", "not-a-uuid"],
        ["dlq", "show", "nothing-7"],
    ],
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2


def test_money_and_dates_go_to_json_as_strings() -> None:
    from datetime import date
    from decimal import Decimal

    from services.license_orders.queries import ProductLicenses

    assert jsonable({"a": Decimal("1.50"), "d": date(2026, 12, 1)}) == {"a": "1.50", "d": "2026-12-01"}
    assert jsonable(ProductLicenses("user", 3, 1, 1))["available"] == 1


@pytest.mark.parametrize("service", ["license_orders", "usage_metering", "cycle_close", "alert_board"])
def test_each_service_the_dlq_command_asks_is_read_with_that_services_own_role(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from billing_cli.dlq import SERVICES

    monkeypatch.setenv("BILLING_DATABASE_USER", "operator")
    monkeypatch.setenv("BILLING_DATABASE_PASSWORD", "not-this-one")
    monkeypatch.setenv(f"BILLING_{service.upper()}_DATABASE_USER", service)
    monkeypatch.setenv(f"BILLING_{service.upper()}_DATABASE_PASSWORD", f"{service}-password")
    settings = importlib.import_module(f"services.{service}.settings").Settings()

    assert service in SERVICES
    assert (settings.database_user, settings.database_name) == (service, service)
    assert settings.database_password.get_secret_value() == f"{service}-password"


def test_the_schedulers_cron_job_settings_start_the_cli_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    from billing_cli.settings import CliSettings
    from deploy.k8s import generate
    from services.cycle_close.settings import Settings

    container = generate.close_cycles_cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    for name, value in generate.COMMON_SETTINGS.items():
        monkeypatch.setenv(name, value)
    for variable in container["env"]:  # the password from the scheduler's KafkaUser Secret
        monkeypatch.setenv(variable["name"], variable.get("value", "from-the-secret-Xk2"))
    monkeypatch.delenv("BILLING_DATABASE_PASSWORD", raising=False)

    settings = CliSettings()  # it has no database of its own: none is asked for

    assert (settings.environment, settings.kafka_sasl_username) == ("production", "scheduler")
    assert settings.signing_key_id == "scheduler"
    monkeypatch.setenv("BILLING_TRUSTED_KEYS_FILE", "/etc/billing/trusted-keys/trusted-keys.json")
    with pytest.raises(ValueError, match="placeholder"):
        Settings()  # a service (with its registry) still refuses the placeholder database password
