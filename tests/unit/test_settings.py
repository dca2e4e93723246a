"""Database settings: a TCP host or the directory of a local Unix socket, secrets quoted."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr, ValidationError

from billing_cli.settings import CliSettings
from services.alert_board.settings import Settings as AlertBoardSettings
from services.usage_metering.settings import Settings
from shared.settings import ServiceSettings


def test_a_host_name_gives_a_tcp_url_with_the_password_quoted() -> None:
    settings = ServiceSettings(
        database_host="db.internal", database_port=5433, database_password=SecretStr("p@ss/w:rd"), database_name="x"
    )
    url = urlsplit(settings.database_dsn)

    assert (url.hostname, url.port, url.path) == ("db.internal", 5433, "/x")
    assert url.password == "p%40ss%2Fw%3Ard"  # quoted: the URL stays parseable
    assert settings.database_url.startswith("postgresql+asyncpg://")


def test_a_directory_as_host_gives_the_unix_socket_there_on_the_same_port() -> None:
    settings = ServiceSettings(database_host="/var/run/postgresql", database_port=55434, database_name="cycle_close")
    url = urlsplit(settings.database_dsn)

    assert url.hostname is None and url.path == "/cycle_close"
    assert parse_qs(url.query) == {"host": ["/var/run/postgresql"], "port": ["55434"]}


def test_tuning_settings_out_of_range_are_refused_with_the_setting_named() -> None:
    for field, value in [("calls_consumers", 0), ("calls_linger_ms", 0), ("calls_fetch_min_bytes", 0)]:
        with pytest.raises(ValidationError, match=field):
            Settings.model_validate({field: value})
    for field, value in [
        ("kafka_heartbeat_interval_ms", 10),
        ("kafka_heartbeat_interval_ms", 5000),
        ("gc_young_threshold", -1),
        ("consumers_per_subscription", 0),
    ]:
        with pytest.raises(ValidationError, match=field):
            ServiceSettings.model_validate({field: value})


PRODUCTION_KAFKA: dict[str, str | None] = {
    "environment": "production",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "license-orders",
    "kafka_sasl_password": "kafka-s3cret-value",
    "database_password": "db-s3cret-value",
    "trusted_keys_file": "/etc/billing/trusted-keys.json",
}


def test_production_refuses_to_start_without_kafka_authentication() -> None:
    ServiceSettings.model_validate(PRODUCTION_KAFKA)  # authenticated: fine
    lacking: list[dict[str, str | None]] = [
        {"kafka_security_protocol": "PLAINTEXT"},
        {"kafka_security_protocol": "SSL"},
        {"kafka_sasl_mechanism": None},
        {"kafka_sasl_username": None},
        {"kafka_sasl_password": None},
    ]
    for missing in lacking:
        with pytest.raises(ValidationError, match="production needs Kafka authentication"):
            ServiceSettings.model_validate({**PRODUCTION_KAFKA, **missing})
    ServiceSettings.model_validate({**PRODUCTION_KAFKA, "environment": "development", "kafka_sasl_password": None})


def test_production_refuses_to_start_without_a_registry_of_trusted_keys() -> None:
    with pytest.raises(ValidationError, match="BILLING_TRUSTED_KEYS_FILE"):
        ServiceSettings.model_validate({**PRODUCTION_KAFKA, "trusted_keys_file": None})
    assert ServiceSettings().trusted_keys().keys == {}  # development without one: no command is believed
    # What reads no command topic needs none: the operators' CLI (the scheduler's cron job), the board.
    unregistered = {**PRODUCTION_KAFKA, "trusted_keys_file": None}
    assert CliSettings.model_validate(unregistered).trusted_keys_file is None
    assert AlertBoardSettings.model_validate(unregistered).trusted_keys_file is None


def test_secrets_never_show_in_the_settings_repr_str_or_dump() -> None:
    settings = ServiceSettings.model_validate(PRODUCTION_KAFKA)
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert "s3cret" not in text
    assert settings.kafka_options()["sasl_plain_password"] == "kafka-s3cret-value"  # still usable by clients
