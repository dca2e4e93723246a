"""Settings every service reads from the environment (pydantic-settings), with safe defaults for local dev."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.db import postgres_dsn
from shared.runtime.authentication import Signer, TrustedKeys

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "billing"}


class ServiceSettings(BaseSettings):
    """Shared settings; each service subclasses it with its own env prefix and database."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")
    # Whether the process connects with its own BILLING_DATABASE_* settings, which production then
    # checks; the operators' command reads each service's database with that service's settings.
    uses_database: ClassVar[bool] = True

    environment: Literal["development", "test", "production"] = "development"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    # Commands are believed only when signed by a key of this registry (a secret: the senders' keys
    # toward this service), claiming a role that key may claim (shared/runtime/authentication.py);
    # without one, every command is refused.
    trusted_keys_file: str | None = None
    reads_commands: ClassVar[bool] = True
    """Whether this process consumes a command topic (then production needs ``trusted_keys_file``)."""
    # What this process signs the commands it sends with (the cycle-close continuations, its CLI):
    # its master secret, 32 raw bytes, and its key id.
    signing_key_file: str | None = None
    signing_key_id: str | None = None
    # A consumer learns of a rebalance (a replica joins or leaves) at its next heartbeat, and the
    # whole group stops until every member has rejoined: 1 s instead of aiokafka's 3 s shortens
    # each such pause (a worker's start-up is several joins). The session timeout stays 10 s.
    kafka_heartbeat_interval_ms: int = Field(default=1000, ge=100, le=3000)

    database_host: str = "127.0.0.1"  # or the directory of PostgreSQL's Unix socket, e.g. /var/run/postgresql
    database_port: int = 55432
    database_user: str = "billing"
    database_password: SecretStr = SecretStr("billing")
    database_name: str = "postgres"

    batch_max_records: int = 500
    batch_timeout_ms: int = 5
    # How long the broker may hold a fetch when there is no new data. aiokafka keeps one fetch in
    # flight per broker and leaves out the partitions whose records are still being processed,
    # so a record arriving on such a partition waits for that fetch to come back: this bounds it.
    fetch_max_wait_ms: int = 100
    # Kafka consumers (of one group) per subscription in this process; they share its partitions,
    # and while one waits for PostgreSQL (a round trip, a WAL flush) the other processes its batch
    # (docs/architecture.md, Decisions).
    consumers_per_subscription: int = Field(default=2, ge=1)
    # Offsets are committed after the batch's transaction, at most this often (0: after every batch).
    offset_commit_interval_ms: int = 100
    # A young-generation garbage collection runs when this many more container objects have been
    # allocated than freed (Python's default: 700; 0 keeps Python's thresholds; see
    # tune_garbage_collector for the older generations). Metering sets its own, higher.
    gc_young_threshold: int = Field(default=50_000, ge=0)
    # Processed message ids are kept this long (the inbox drops a week's partition once its newest
    # id is older): longer than any redelivery can come (docs/architecture.md, "Bounded stores").
    inbox_retention_days: int = Field(default=30, ge=1)
    dead_letter_retention_days: int = Field(default=90, ge=1)
    retention_interval_s: float = Field(default=3600.0, gt=0)
    relay_batch_size: int = 2000
    relay_poll_interval_s: float = 0.05
    fault_crash_before_commit: int = 0
    fault_crash_after_commit: int = 0
    # The worker's /metrics, /healthz and /readyz listener; 0 turns it (and all counting) off. Each
    # service has its own default (license orders 9101, usage metering 9102, cycle close 9103,
    # alert board 9104); replicas on one machine each need their own. All interfaces by default:
    # probes and scrapers come from outside a container.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @property
    def database_dsn(self) -> str:
        """libpq-style URL (asyncpg connects with it directly)."""
        return postgres_dsn(
            self.database_user,
            self.database_password.get_secret_value(),
            self.database_host,
            self.database_port,
            self.database_name,
        )

    @property
    def database_url(self) -> str:
        """The same for SQLAlchemy."""
        return self.database_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    @model_validator(mode="after")
    def _authenticated_and_no_placeholder_secrets_in_production(self) -> ServiceSettings:
        if self.environment == "production":
            if not (
                self.kafka_security_protocol.startswith("SASL_")
                and self.kafka_sasl_mechanism
                and self.kafka_sasl_username
                and self.kafka_sasl_password
            ):
                raise ValueError(
                    "production needs Kafka authentication: BILLING_KAFKA_SECURITY_PROTOCOL=SASL_SSL (or "
                    "SASL_PLAINTEXT), BILLING_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD"
                )
            secrets = [self.database_password] if self.uses_database else []
            if self.kafka_sasl_password is not None:
                secrets.append(self.kafka_sasl_password)
            for secret in secrets:
                if secret.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                    raise ValueError("a placeholder secret is refused outside development; set a real one")
            if self.reads_commands and not self.trusted_keys_file:
                raise ValueError("production needs BILLING_TRUSTED_KEYS_FILE: whose signed commands to believe")
        return self

    def trusted_keys(self) -> TrustedKeys:
        """The registry of keys this service believes; none configured: it believes no command."""
        return TrustedKeys.from_file(self.trusted_keys_file) if self.trusted_keys_file else TrustedKeys({})

    def signer(self) -> Signer | None:
        if not (self.signing_key_file and self.signing_key_id):
            return None
        return Signer.from_file(self.signing_key_id, self.signing_key_file)

    def kafka_options(self) -> dict[str, Any]:
        """Connection options for aiokafka / FastStream, security included."""
        options: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap_servers}
        if self.kafka_security_protocol != "PLAINTEXT":
            options["security_protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_security_protocol.endswith("SSL"):
            import ssl

            options["ssl_context"] = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
        return options
