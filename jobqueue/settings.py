"""One settings class, read from the environment (names fixed by DESIGN.md section 6)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    upstash_url: str | None = Field(
        default=None, validation_alias=AliasChoices("UPSTASH_REDIS_REST_URL", "KV_REST_API_URL")
    )
    upstash_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("UPSTASH_REDIS_REST_TOKEN", "KV_REST_API_TOKEN"),
        repr=False,
    )
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")

    api_token: str | None = Field(default=None, validation_alias="JOBS_API_TOKEN", repr=False)
    # Scoped credentials (DESIGN.md section 8): enqueue and read a job by id; read the metrics.
    enqueue_token: str | None = Field(default=None, validation_alias="JOBS_ENQUEUE_TOKEN", repr=False)
    metrics_token: str | None = Field(default=None, validation_alias="JOBS_METRICS_TOKEN", repr=False)
    worker_secret: str | None = Field(default=None, validation_alias="WORKER_SECRET", repr=False)
    cron_secret: str | None = Field(default=None, validation_alias="CRON_SECRET", repr=False)
    qstash_token: str | None = Field(default=None, validation_alias="QSTASH_TOKEN", repr=False)
    qstash_url: str | None = Field(default=None, validation_alias="QSTASH_URL")
    qstash_current_signing_key: str | None = Field(
        default=None, validation_alias="QSTASH_CURRENT_SIGNING_KEY", repr=False
    )
    qstash_next_signing_key: str | None = Field(default=None, validation_alias="QSTASH_NEXT_SIGNING_KEY", repr=False)
    public_url: str | None = Field(default=None, validation_alias="JOBQUEUE_PUBLIC_URL")
    # Set by Vercel on every deployment, without a scheme; used when JOBQUEUE_PUBLIC_URL is unset.
    vercel_env: str | None = Field(default=None, validation_alias="VERCEL_ENV")
    vercel_production_host: str | None = Field(default=None, validation_alias="VERCEL_PROJECT_PRODUCTION_URL")
    vercel_host: str | None = Field(default=None, validation_alias="VERCEL_URL")

    registry: str = Field(default="jobqueue.builtins:default_registry", validation_alias="JOBQUEUE_REGISTRY")
    prefix: str = Field(default="jq", validation_alias="JOBQUEUE_PREFIX", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    batch_size: int = Field(default=500, ge=1, le=1000, validation_alias="JOBQUEUE_BATCH_SIZE")
    # Jobs one drain runs at once (its slots), and the share of them one queue may hold, so a
    # queue of slow jobs cannot take every slot (drain/loop.py).
    concurrency: int = Field(default=1000, ge=1, le=5000, validation_alias="JOBQUEUE_CONCURRENCY")
    queue_share: float = Field(default=0.75, gt=0, le=1, validation_alias="JOBQUEUE_QUEUE_SHARE")
    # A lease is the job's timeout plus this; a dead drain's jobs come back that long after
    # their timeout at the latest (drain/leases.py).
    lease_grace_ms: int = Field(default=5000, ge=0, validation_alias="JOBQUEUE_LEASE_GRACE_MS")
    heartbeat_ms: int = Field(default=1000, ge=10, le=60_000, validation_alias="JOBQUEUE_HEARTBEAT_MS")
    # How long the recorder lets a group of outcomes fill before writing it (drain/recorder.py).
    record_linger_ms: float = Field(default=5, ge=0, le=1000, validation_alias="JOBQUEUE_RECORD_LINGER_MS")
    # Not switchable off: it is what indexes a job whose push failed in a process that then
    # went away (a flushed Redis is caught by the epoch marker whatever this says).
    reconcile_interval_s: int = Field(default=300, ge=10, validation_alias="JOBQUEUE_RECONCILE_INTERVAL_S")
    # The function's maxDuration (vercel.json) and the margin kept free for the response.
    max_duration_s: float = Field(default=60, gt=0, validation_alias="JOBQUEUE_MAX_DURATION_S")
    budget_margin_s: float = Field(default=5, ge=0, validation_alias="JOBQUEUE_BUDGET_MARGIN_S")
    default_timeout_ms: int = Field(default=30_000, ge=1, validation_alias="JOBQUEUE_DEFAULT_TIMEOUT_MS")
    max_payload_bytes: int = Field(default=256 * 1024, ge=1, validation_alias="JOBQUEUE_MAX_PAYLOAD_BYTES")
    redis_timeout_s: float = Field(default=5.0, gt=0, validation_alias="JOBQUEUE_REDIS_TIMEOUT_S")
    pg_timeout_s: float = Field(default=10.0, gt=0, validation_alias="JOBQUEUE_PG_TIMEOUT_S")
    # None: automatic (off behind a pooler host such as Neon's `-pooler`, on for direct connections).
    pg_statement_cache: bool | None = Field(default=None, validation_alias="JOBQUEUE_PG_STATEMENT_CACHE")
    pg_pool_max: int = Field(default=10, ge=1, validation_alias="JOBQUEUE_PG_POOL_MAX")
    kick_interval_ms: int = Field(default=1000, ge=0, validation_alias="JOBQUEUE_KICK_INTERVAL_MS")
    # How often the regular scheduler (Vercel Cron, a QStash schedule, EventBridge) calls
    # /api/workers. With QStash, a drain publishes one delayed kick for the earliest due time (a
    # schedule's tick, a delayed job, a retry) when it falls before the next regular tick would.
    tick_interval_s: int = Field(default=60, ge=1, validation_alias="JOBQUEUE_TICK_INTERVAL_S")

    retain_completed_days: float = Field(default=7, ge=0, validation_alias="JOBQUEUE_RETAIN_COMPLETED_DAYS")
    retain_failed_days: float = Field(default=90, ge=0, validation_alias="JOBQUEUE_RETAIN_FAILED_DAYS")
    housekeeping_interval_s: int = Field(default=600, ge=1, validation_alias="JOBQUEUE_HOUSEKEEPING_INTERVAL_S")

    webhook_signing_secret: str | None = Field(default=None, validation_alias="WEBHOOK_SIGNING_SECRET", repr=False)
    webhook_allow_private: bool = Field(default=False, validation_alias="WEBHOOK_ALLOW_PRIVATE_NETWORKS")
    # One shared client per process (per event loop): connections in all, and requests in flight
    # per destination (scheme, host, port), so one slow receiver cannot take every connection.
    webhook_max_connections: int = Field(default=256, ge=1, le=10_000, validation_alias="WEBHOOK_MAX_CONNECTIONS")
    webhook_max_per_host: int = Field(default=64, ge=1, le=10_000, validation_alias="WEBHOOK_MAX_CONNECTIONS_PER_HOST")

    # Failed credentials (wrong or missing tokens, bad QStash signatures, wrong dashboard logins)
    # per client address and in all, per window; past either limit they answer 429 + Retry-After.
    # A valid credential is never throttled.
    auth_failures_per_address: int = Field(default=20, ge=1, validation_alias="JOBQUEUE_AUTH_FAILURES_PER_ADDRESS")
    auth_failures_total: int = Field(default=200, ge=1, validation_alias="JOBQUEUE_AUTH_FAILURES_TOTAL")
    auth_window_s: int = Field(default=60, ge=1, le=86_400, validation_alias="JOBQUEUE_AUTH_WINDOW_S")
    # Whose address is the client's: None (auto) trusts X-Forwarded-For on Vercel only, whose edge
    # overwrites it; True trusts the first X-Forwarded-For (or X-Real-IP) hop; False the peer.
    auth_trust_proxy: bool | None = Field(default=None, validation_alias="JOBQUEUE_AUTH_TRUST_PROXY")

    # How often the dashboard's overview, jobs and job pages refresh themselves (0: never).
    dashboard_refresh_s: int = Field(default=5, ge=0, le=3600, validation_alias="JOBQUEUE_DASHBOARD_REFRESH_S")

    alert_webhook_url: str | None = Field(default=None, validation_alias="ALERT_WEBHOOK_URL", repr=False)
    alert_dlq_threshold: int = Field(default=100, ge=1, validation_alias="ALERT_DLQ_THRESHOLD")
    alert_max_wait_s: int = Field(default=600, ge=1, validation_alias="ALERT_MAX_WAIT_S")
    alert_interval_s: int = Field(default=900, ge=1, validation_alias="ALERT_INTERVAL_S")

    @model_validator(mode="after")
    def _public_url_from_vercel(self) -> Settings:
        """On Vercel, default the public URL to the production domain in production and to the
        deployment's own URL elsewhere (a preview's kicks must reach that preview). An explicit
        JOBQUEUE_PUBLIC_URL always wins: QStash schedules aimed at a custom domain need it."""
        if not self.public_url:
            host = self.vercel_production_host if self.vercel_env == "production" else None
            host = host or self.vercel_host
            if host:
                self.public_url = "https://" + host.removeprefix("https://").rstrip("/")
        return self

    @property
    def budget_s(self) -> float:
        """How long one /api/workers drain may run: maxDuration less the safety margin."""
        return max(1.0, self.max_duration_s - self.budget_margin_s)
