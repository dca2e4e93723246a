"""Cycle close' settings: the shared ones plus its own database."""

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    database_name: str = "cycle_close"
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    # BILLING_CYCLE_CLOSE_DATABASE_USER / _PASSWORD win over BILLING_DATABASE_*: the operators' command
    # reads every service's database, each as that service (deploy/credentials.py, "operator").
    database_user: str = Field(
        default="billing",
        validation_alias=AliasChoices("billing_cycle_close_database_user", "billing_database_user", "database_user"),
    )
    database_password: SecretStr = Field(
        default=SecretStr("billing"),
        validation_alias=AliasChoices(
            "billing_cycle_close_database_password", "billing_database_password", "database_password"
        ),
    )
    batch_max_records: int = 2000
    # A trigger closes this many accounts per transaction, then hands the rest to a continuation
    # of itself (billing.commands): seals and invoices start after the first chunk, not the last.
    close_chunk_accounts: int = Field(default=5000, ge=1)
