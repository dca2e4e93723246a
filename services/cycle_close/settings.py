"""Cycle close' settings: the shared ones plus its own database."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    database_name: str = "cycle_close"
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    batch_max_records: int = 2000
    # A trigger closes this many accounts per transaction, then hands the rest to a continuation
    # of itself (billing.commands): seals and invoices start after the first chunk, not the last.
    close_chunk_accounts: int = Field(default=5000, ge=1)
