"""License orders' settings: the shared ones plus its own database."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    database_name: str = "license_orders"
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    batch_max_records: int = 2000
