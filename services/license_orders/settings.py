"""License orders' settings: the shared ones plus its own database."""

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    database_name: str = "license_orders"
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    # BILLING_LICENSE_ORDERS_DATABASE_USER / _PASSWORD win over BILLING_DATABASE_*: the operators' command
    # reads every service's database, each as that service (deploy/credentials.py, "operator").
    database_user: str = Field(
        default="billing",
        validation_alias=AliasChoices("billing_license_orders_database_user", "billing_database_user", "database_user"),
    )
    database_password: SecretStr = Field(
        default=SecretStr("billing"),
        validation_alias=AliasChoices(
            "billing_license_orders_database_password", "billing_database_password", "database_password"
        ),
    )
    batch_max_records: int = 2000
