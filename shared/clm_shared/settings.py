"""One settings class for every service, read from ``CLM_*`` environment variables."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Validated at start-up: a bad value stops the process with the setting's name."""

    model_config = SettingsConfigDict(env_prefix="CLM_", extra="ignore")

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port.")
    database_url: str = Field(
        "postgresql+asyncpg://clm@127.0.0.1:5432/clm",
        description="SQLAlchemy URL of PostgreSQL (asyncpg driver).",
    )
    topic_namespace: str = Field("", description="Prefix put before every topic name (isolates test runs or tenants).")
    schema_namespace: str = Field("", description="Prefix put before every service's PostgreSQL schema name.")
    kafka_partitions: int = Field(6, ge=1, le=1000, description="Partitions of topics the platform creates.")
    kafka_replication_factor: int = Field(1, ge=1, le=10, description="Replication factor of created topics.")
    ingest_publish_timeout_s: float = Field(
        5.0, gt=0, le=60, description="How long ingest waits for Kafka's acknowledgement before answering 503."
    )
    http_body_timeout_s: float = Field(
        20.0,
        gt=0,
        le=600,
        description="How long a client may take to send a request body; a slower one gets 408 and is disconnected.",
    )
    http_max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="The largest request body any service reads (ingest holds its own tighter limits); over it, 413.",
    )
    ingest_workers: int = Field(
        1, ge=1, le=64, description="Worker processes of the ingest API (each with its own Kafka producer)."
    )
    rules_file: Path | None = Field(
        None, description="YAML lifecycle rules replacing the shipped defaults (stage-engine)."
    )
    stage_engine_batch_size: int = Field(
        2000, ge=1, le=10000, description="Touchpoints the stage engine applies in one transaction."
    )
    stage_engine_workers: int = Field(
        1, ge=1, le=64, description="Engine processes in one stage-engine service; they share the consumer group."
    )
    stage_engine_dedup_days: float = Field(
        30, gt=0, le=3650, description="How long the stage engine remembers a messageId to drop duplicates."
    )
    stage_engine_timer_interval_s: float = Field(
        1.0, gt=0, le=3600, description="How often the stage engine looks for due inactivity timers."
    )
    metrics_workers: int = Field(
        1, ge=1, le=64, description="Metrics processes in one metrics service; they share its consumer groups."
    )
    metrics_dedup_days: float = Field(
        30, gt=0, le=3650, description="How long the metrics service remembers an event id to drop duplicates."
    )
    metrics_clv_refit_interval_s: float = Field(
        3600, ge=10, le=7 * 86400, description="How often the metrics service refits the predicted-CLV model."
    )
    campaigns_max_trigger_age: timedelta = Field(
        timedelta(hours=24),
        description="A campaign trigger older than this when decided is skipped as `stale` (seconds or ISO 8601).",
    )
    campaigns_frequency_cap: int = Field(
        3, ge=0, le=1000, description="Messages one customer may get from all non-transactional campaigns per window."
    )
    campaigns_frequency_window: timedelta = Field(
        timedelta(days=7), description="The window of the frequency cap (seconds or ISO 8601)."
    )
    campaigns_quiet_hours: str = Field(
        "21:00-08:00",
        description="Local hours (the customer's timezone trait, else UTC) in which sends wait; empty for none.",
    )
    campaigns_holdout_percent: float = Field(
        10.0, ge=0, le=100, description="Default share of a campaign's audience held out to measure uplift."
    )
    campaigns_attribution_window: timedelta = Field(
        timedelta(days=7), description="An order this long after a send counts as that campaign's conversion."
    )
    campaigns_send_attempts: int = Field(5, ge=1, le=50, description="Tries of one send before it is marked failed.")
    campaigns_retry_base_s: float = Field(
        30.0, gt=0, le=86400, description="First retry delay of a failed send; doubled at each further try."
    )
    campaigns_tick_interval_s: float = Field(
        0.25, gt=0, le=60, description="How often the campaigns service looks for due waits and sends."
    )
    campaigns_dedup_days: float = Field(
        30, gt=0, le=3650, description="How long the campaigns service remembers an event id to drop duplicates."
    )
    campaigns_dir: Path | None = Field(
        None, description="A folder of campaign YAML files loaded besides the shipped ones."
    )
    campaigns_public_url: str = Field(
        "http://127.0.0.1:8004", description="Base URL of the campaigns service in links sent to customers."
    )
    campaigns_signing_key: SecretStr | None = Field(
        None,
        description="Key that signs unsubscribe links and referral codes; generated into <data dir>/campaigns-key"
        " when unset.",
    )
    campaigns_url: str = Field(
        "http://127.0.0.1:8004", description="Where the metrics dashboard reaches the campaigns API."
    )
    smtp_host: str | None = Field(
        None, description="SMTP server for campaign email; unset, `clm up` starts a local sink and uses it."
    )
    smtp_port: int = Field(8025, ge=1, le=65535, description="Port of the SMTP server.")
    smtp_tls: Literal["none", "starttls", "tls"] = Field("none", description="SMTP transport security.")
    smtp_username: str | None = Field(None, description="SMTP login user, if the server needs one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP login password (never logged).")
    smtp_timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout of one SMTP conversation.")
    mail_from: str = Field("clm <noreply@clm.invalid>", description="The From header of campaign email.")
    webhook_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC-SHA256 signature on campaign webhooks; else generated into"
        " <data dir>/webhook-secret.",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, le=120, description="Timeout of one campaign webhook call.")
    erasure_key: SecretStr | None = Field(
        None,
        description="Key of the keyed hash that erased ids are remembered by; generated into <data dir>/erasure-key"
        " when unset.",
    )
    host: str = Field("127.0.0.1", description="Interface the HTTP servers listen on.")
    ingest_port: int = Field(8001, ge=1, le=65535, description="Port of the ingest API.")
    stage_engine_port: int = Field(8002, ge=1, le=65535, description="Port of the stage-engine customer API.")
    metrics_port: int = Field(8003, ge=1, le=65535, description="Port of the metrics API and dashboard.")
    campaigns_port: int = Field(8004, ge=1, le=65535, description="Port of the campaigns API.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["console", "json"] = Field("console", description="Log lines for people or for machines.")
    data_dir: Path = Field(Path(".data"), description="Where `clm up` keeps Kafka and PostgreSQL data.")
    cache_dir: Path = Field(Path(".cache"), description="Where `clm` keeps downloads (the Kafka jars).")
    kafka_heap_mb: int = Field(512, ge=128, le=8192, description="JVM heap of the local Kafka broker.")
    kafka_brokers: int = Field(
        1,
        ge=1,
        le=9,
        description="Brokers `clm up` runs here (a KRaft cluster on consecutive port pairs from the bootstrap port).",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="An admin API token accepted besides the stored ones (else `<data_dir>/admin-token`).",
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_uses_asyncpg(cls, value: str) -> str:
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must start with postgresql+asyncpg:// (the services use asyncpg)")
        return value

    @field_validator("topic_namespace", "schema_namespace")
    @classmethod
    def _namespace_is_safe(cls, value: str) -> str:
        if value and not all(c.isalnum() or c in "_" for c in value):
            raise ValueError("only letters, digits and _ are allowed")
        return value.lower()

    @field_validator("admin_token", mode="before")
    @classmethod
    def _admin_token_is_long(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # an empty variable means "not set"
        secret = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if len(secret.strip()) < 24:
            raise ValueError("must be at least 24 characters, e.g. from `openssl rand -base64 32`")
        return SecretStr(secret.strip())

    def port_of(self, service: str) -> int:
        """The HTTP port of one of the four services, by its name."""
        ports = {
            "ingest": self.ingest_port,
            "stage-engine": self.stage_engine_port,
            "metrics": self.metrics_port,
            "campaigns": self.campaigns_port,
        }
        return ports[service]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def load_settings_or_exit() -> Settings:
    """Settings for a process entrypoint: a bad value ends it with one line per setting, no traceback."""
    from pydantic import ValidationError

    from clm_shared.errors import describe_settings_error

    try:
        return get_settings()
    except ValidationError as exc:
        raise SystemExit(f"invalid settings:\n{describe_settings_error(exc)}") from None
