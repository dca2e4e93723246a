"""Usage metering' settings: the shared ones plus its own database."""

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    database_name: str = "usage_metering"
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    # BILLING_USAGE_METERING_DATABASE_USER / _PASSWORD win over BILLING_DATABASE_*: the operators' command
    # reads every service's database, each as that service (deploy/credentials.py, "operator").
    database_user: str = Field(
        default="billing",
        validation_alias=AliasChoices("billing_usage_metering_database_user", "billing_database_user", "database_user"),
    )
    database_password: SecretStr = Field(
        default=SecretStr("billing"),
        validation_alias=AliasChoices(
            "billing_usage_metering_database_password", "billing_database_password", "database_password"
        ),
    )
    batch_max_records: int = 5000
    # With more than calls_catch_up_lag calls waiting on a consumer's partitions, its batches take up
    # to calls_catch_up_batch_max_records: each sorted COPY over more calls costs PostgreSQL less a
    # call, but a bigger batch makes the calls behind it wait longer, so only a backlog gets them
    # (worker.CatchUpSize; docs/architecture.md, Decisions).
    calls_catch_up_batch_max_records: int = Field(default=20_000, ge=1)
    calls_catch_up_lag: int = Field(default=100_000, ge=0)
    # usage.calls: a fetch returns once this much is there (~1,000 calls) or after calls_linger_ms,
    # so at moderate rates a batch holds more than a handful of calls (fewer transactions).
    calls_fetch_min_bytes: int = Field(default=256 * 1024, ge=1)
    calls_linger_ms: int = Field(default=10, ge=1)
    # One consumer of usage.calls per process: its batches are twice as full as with two, and a
    # batch's cost is mostly fixed (docs/architecture.md, Decisions).
    calls_consumers: int = Field(default=1, ge=1)
    # While a full batch of 20,000 calls (a backlog's) is fetched and handled, a worker allocates more
    # than 400,000 container objects beyond those it frees; all are freed by reference counting when the batch
    # ends, so a young collection in between only walks them (docs/architecture.md, Decisions).
    gc_young_threshold: int = Field(default=800_000, ge=0)
    # Call ids this process committed lately, kept to drop repeat reports before the calls' COPY
    # (storage.RecentCalls: at least the latest half of this many, at most this many plus a batch);
    # a repeat older than that still meets the call_ids key. 0: keep none.
    recent_calls: int = Field(default=100_000, ge=0)
    # The meters folded in memory are written back as snapshots every this many seconds, or after
    # this many batches (0: by time only), whichever comes first (snapshots.MeterSnapshots). Only
    # what a new owner reads after a crash or a rebalance depends on it, never the amounts.
    meter_snapshot_interval_s: float = Field(default=30.0, gt=0)
    meter_snapshot_batches: int = Field(default=1000, ge=0)
