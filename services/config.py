"""Settings: read once from `VIEWCOUNTER_*` environment variables at the process edge."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "VIEWCOUNTER_"
PLACEHOLDER_TOKENS = frozenset({"changeme", "change-me", "secret", "admin", "password", "token"})
MIN_ADMIN_TOKEN_CHARS = 16
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
CLUSTER_SHARDS = 16


class ConfigError(Exception):
    """The environment holds invalid settings; `lines` has one clear line per bad value."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class Settings(BaseSettings):
    """Every knob of the api and the flusher; built once by `load_settings()`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    redis_url: str = Field(min_length=1)
    # Redis Cluster: also chosen by a redis+cluster:// (rediss+cluster://) URL.
    redis_cluster: bool = False
    # Units each site is split into by page (keys.py), each its own Cluster slot, so one busy
    # site spreads over the Cluster's nodes. 0: 16 on a Cluster, 1 on a single Redis (where
    # more would only cost). Changing it needs a drained Redis (docs/scaling.md).
    shards: int = Field(default=0, ge=0, le=1024)
    database_url: str = Field(min_length=1)
    # Where reports and the dashboard read (a Postgres replica, say); None: database_url.
    reports_database_url: str | None = None
    admin_token: SecretStr | None = None
    # Bearer token for POST /v1/sites/{site}/hits/batch (the admin token works there too).
    ingest_token: SecretStr | None = None
    flush_interval: float = Field(default=5.0, gt=0, le=3600)
    # Seconds a flusher's claim on a site lasts unless renewed (every pass renews it); the
    # sites of a flusher that died are taken over by another within about this time.
    flush_lease: float = Field(default=15.0, gt=0, le=3600)
    dedupe_window: int = Field(default=1800, ge=0, le=7 * 86400)
    rate_limit: int = Field(default=600, ge=0)
    # Seconds a batch sent with an Idempotency-Key is remembered: sent again within it, it
    # counts nothing again (docs/http-api.md).
    idempotency_ttl: int = Field(default=86400, ge=60, le=7 * 86400)
    # Admin requests per client IP per clock minute (answered 429 beyond it); 0: no limit.
    admin_rate_limit: int = Field(default=120, ge=0)
    # Distinct page ids a site may have; a hit for a new page beyond it is not counted, so a
    # flood of random page ids cannot grow Redis and Postgres without bound. 0: no bound.
    max_pages_per_site: int = Field(default=1_000_000, ge=0)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    # The api's metrics listener: /metrics and the /readyz checks, off the public port
    # (services/api/ops_listener.py). Port 0: no such listener.
    api_metrics_port: int = Field(default=9102, ge=0, le=65535)
    api_metrics_host: str = Field(default="127.0.0.1", min_length=1)
    # Seconds the hit path waits for Redis before answering 503.
    redis_timeout: float = Field(default=2.0, gt=0, le=60)
    redis_max_connections: int = Field(default=64, ge=1, le=10000)
    # Largest request body accepted on public routes, in bytes.
    max_body_bytes: int = Field(default=16 * 1024, ge=256, le=16 * 1024 * 1024)
    # Postgres statement_timeout for flusher and admin work, in seconds.
    statement_timeout: float = Field(default=30.0, gt=0, le=3600)
    # "everysec" trusts Redis' AOF policy; "always" makes each flush snapshot wait for fsync
    # (WAITAOF) before it is written to Postgres, so a Redis crash cannot replay it.
    snapshot_fsync: Literal["wait", "none"] = "wait"
    # Replicas (of the node holding it) a flush snapshot must reach (WAITAOF numreplicas /
    # WAIT) before its batch goes to Postgres, so a failover cannot bring it back; 0: none.
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Server-Sent Events streams (GET /v1/sites/{site}/stream) one api process keeps open.
    stream_max_connections: int = Field(default=500, ge=0, le=100_000)
    # Bearer token for the report routes and the dashboard (the admin token works there too).
    report_token: SecretStr | None = Field(default=None, min_length=MIN_ADMIN_TOKEN_CHARS)
    # Seconds a starting process waits for its dependencies (one log line per attempt): the
    # flusher for Redis, Postgres and the schema, then exits 1; the api for Redis, then serves
    # anyway (hits answer 503 until Redis is back).
    startup_timeout: float = Field(default=30.0, ge=0, le=3600)
    # Seconds during which a visitor seen by a hit counts as online in the statistics block
    # (GET /v1/sites/{site}/stats): whole minutes, since visitors are kept per clock minute.
    online_window: int = Field(default=300, ge=60, le=3600)
    # Seconds a stopping api waits for requests in flight (streams end within ~20 s).
    shutdown_timeout: float = Field(default=25.0, ge=0, le=3600)

    @field_validator("admin_token", "ingest_token")
    @classmethod
    def _refuse_placeholder_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        secret = value.get_secret_value()
        if secret.lower() in PLACEHOLDER_TOKENS or len(secret) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"must be a random secret of at least {MIN_ADMIN_TOKEN_CHARS} characters"
            )
        return value

    @field_validator("online_window")
    @classmethod
    def _whole_minutes(cls, value: int) -> int:
        if value % 60:
            raise ValueError("must be a whole number of minutes (a multiple of 60)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://") + CLUSTER_SCHEMES):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+cluster:// or "
                "rediss+cluster://"
            )
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _cluster_needs_tcp(cls, value: bool, info: ValidationInfo) -> bool:
        if value and str(info.data.get("redis_url", "")).startswith("unix://"):
            raise ValueError("a Redis Cluster needs a redis:// or rediss:// URL, not unix://")
        return value

    @model_validator(mode="after")
    def _cluster_url(self) -> Settings:
        # One place decides: every client built from redis_url sees the cluster scheme.
        if self.redis_cluster and not self.redis_url.startswith(CLUSTER_SCHEMES):
            scheme, rest = self.redis_url.split("://", 1)
            # The model is frozen for everyone else; this is its own construction.
            object.__setattr__(self, "redis_url", f"{scheme}+cluster://{rest}")
        if self.shards == 0:
            clustered = self.redis_url.startswith(CLUSTER_SCHEMES)
            object.__setattr__(self, "shards", CLUSTER_SHARDS if clustered else 1)
        return self

    @field_validator("database_url", "reports_database_url")
    @classmethod
    def _postgres_scheme(cls, value: str | None) -> str | None:
        if value == "":
            return None  # an empty variable: the main database
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value

    @property
    def reports_url(self) -> str:
        """The Postgres URL reports and the dashboard read: reports_database_url, else the
        main database."""
        return self.reports_database_url or self.database_url

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network") from exc
        return value


def load_settings() -> Settings:
    """Build settings from the environment or raise ConfigError with one line per bad value."""
    try:
        return Settings()  # type: ignore[call-arg]  # values come from the environment
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(part) for part in err["loc"][:1]).upper()
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                message = "is required"
            lines.append(f"{name}: {message}")
        raise ConfigError(lines) from None
