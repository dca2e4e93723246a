"""Alert board's settings: the shared ones plus its own database and the web page's address."""

from typing import ClassVar

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")
    reads_commands: ClassVar[bool] = False  # alerts and closed cycles only: no registry of trusted keys

    database_name: str = "alert_board"
    # BILLING_ALERT_BOARD_DATABASE_USER / _PASSWORD win over BILLING_DATABASE_*: the operators' command
    # reads every service's database, each as that service (deploy/credentials.py, "operator").
    database_user: str = Field(
        default="billing",
        validation_alias=AliasChoices("billing_alert_board_database_user", "billing_database_user", "database_user"),
    )
    database_password: SecretStr = Field(
        default=SecretStr("billing"),
        validation_alias=AliasChoices(
            "billing_alert_board_database_password", "billing_database_password", "database_password"
        ),
    )
    metrics_port: int = Field(default=9104, ge=0, le=65535)
    # The page and its JSON API: loopback by default (an operator's machine or a port-forward).
    board_host: str = "127.0.0.1"
    board_port: int = Field(default=8800, ge=0, le=65535)
    # How often the live feed looks for new alerts when no notification came (a lost one).
    board_poll_interval_s: float = Field(default=1.0, gt=0)
