"""The one settings class. Built once per process; every field is also in .env.example.

One piece on purpose (~300 lines): one class, field by field as .env.example lists them, with the
checks that relate fields to each other; split, a reader would look in two places for a setting.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.validation import messages

# Values shipped in .env.example and docker-compose.yml: fine for a laptop, refused in production.
PLACEHOLDER_MARKERS = ("change-me", "changeme", "placeholder", "dev-only")
# base64 of "change-me-dev-signing-secret": signs callbacks in dev; refused in production
DEV_SIGNING_SECRET = "whsec_Y2hhbmdlLW1lLWRldi1zaWduaW5nLXNlY3JldA=="  # noqa: S105 (dev only)
# The API key the README documents: accepted in dev when API_KEYS is unset; a placeholder, so
# production refuses it like any other.
DEV_API_KEY = "change-me-dev-key"


def _split(value: object) -> object:
    """Comma-separated env values become lists (pydantic-settings would expect JSON)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _is_placeholder(value: str) -> bool:
    """A shipped example value, plain or (for whsec_ secrets) base64-encoded."""
    texts = [value.lower()]
    if value.startswith("whsec_"):
        with contextlib.suppress(ValueError):
            texts.append(base64.b64decode(value[6:]).decode(errors="replace").lower())
    return any(marker in text for marker in PLACEHOLDER_MARKERS for text in texts)


def hash_api_key(key: str) -> str:
    """The form an API key is kept in: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class Settings(BaseSettings):
    """Everything the gateway, the workers and beat read from the environment."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    environment: Literal["dev", "production"] = "dev"

    # Redis: unset means "start an embedded one" for `gateway dev` and the tests.
    redis_url: str | None = None
    redis_key_prefix: str = "gw:"
    # Redis answers in microseconds; a second without an answer means it is gone: 503, not a hang.
    redis_timeout_seconds: float = 1.0

    # API keys for /v1/*: plain keys or "sha256:<hex>" of a key. Only the hashes are kept.
    # Unset in dev: DEV_API_KEY, so the README's examples work as printed; production refuses
    # to start without them.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Operator keys: everything an API key may do, and also read every event and dead letter,
    # replay, and manage endpoints. In dev the dev key (when accepted) is one of them.
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Dev mode serves only loopback unless this is set: dev accepts a published key and placeholder
    # secrets. Compose sets it for the API, which binds 0.0.0.0 inside its container while the
    # host publishes the port on 127.0.0.1.
    allow_dev_on_public: bool = False

    # Jobs
    job_ttl_seconds: int = 7 * 24 * 3600
    idempotency_ttl_seconds: int = 24 * 3600
    max_job_body_bytes: int = 1024 * 1024

    # Celery
    # The Redis transport re-delivers an unacked message after visibility_timeout. It must exceed
    # the longest task run (files: time limit below) or a running task is started twice. Retry
    # delays do not ride on countdown/ETA (those would be re-delivered too): they wait in our
    # own schedule.
    visibility_timeout_seconds: int = 2 * 3600
    result_expires_seconds: int = 24 * 3600
    files_task_time_limit_seconds: int = 3600
    default_task_time_limit_seconds: int = 300

    # Retries (one policy for every kind; per-kind overrides arrive with the Delivery issue)
    max_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 3600.0
    retry_jitter: float = 0.2
    scheduler_interval_seconds: float = 0.2

    # Storage for uploaded and produced files
    data_dir: Path = Path("var")
    max_upload_bytes: int = 1024 * 1024 * 1024
    max_fetch_bytes: int = 100 * 1024 * 1024

    # Outbound HTTP (callbacks, forwarded webhooks, fetches): private addresses are refused unless
    # allowlisted here; plain http only when allowed.
    outbound_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    outbound_allow_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    outbound_allow_http: bool = False
    outbound_timeout_seconds: float = 15.0
    outbound_max_response_bytes: int = 64 * 1024

    # Callbacks: Standard Webhooks signing secrets (whsec_...); the first signs, all are listed
    # in webhook-signature during a rotation.
    signing_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=lambda: [SecretStr(DEV_SIGNING_SECRET)]
    )

    # Endpoints (tasks/endpoint_limits.py): failed attempts in a row that pause one; how often a
    # paused one is probed; how long it may fail without a success before it is disabled; how soon
    # a delivery waiting for an in-flight slot or its turn (ordered) is tried again.
    endpoint_pause_after_failures: int = Field(default=5, ge=1)
    endpoint_probe_interval_seconds: float = Field(default=30.0, gt=0)
    endpoint_disable_after_seconds: float = Field(default=5 * 24 * 3600, ge=0)
    endpoint_wait_seconds: float = Field(default=1.0, gt=0)

    # Per-kind retry overrides, JSON: {"callbacks": {"max_attempts": 8, "schedule": [5, 300]},
    # "email": {"max_attempts": 6, "base_seconds": 10}}. Keys: max_attempts, base_seconds,
    # max_seconds, jitter, schedule (seconds between attempts).
    retry_policies: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # Inbound webhooks
    webhook_sources_file: Path | None = None
    webhook_dedup_seconds: int = 24 * 3600
    max_webhook_body_bytes: int = 1024 * 1024

    # Email (SMTP). Unset (None, not a default address) so "no relay configured" is a fact the
    # settings carry, from the environment and .env alike: `gateway dev` then starts its mail
    # catcher and points the email worker at it; an email worker started without it refuses to
    # start (in production there is no catcher to fall back on).
    smtp_host: str | None = None
    smtp_port: int = 1025
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: float = 30.0
    mail_from: str = "gateway@localhost"
    # SMTP sessions a worker process keeps open between emails: its concurrency, or the sessions
    # of a wave of emails that end together are closed and opened again for the next wave.
    smtp_max_idle_connections: int = Field(default=1500, ge=0)

    # LLM provider: any OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM)
    llm_base_url: str = "http://127.0.0.1:11434"
    llm_api_key: SecretStr | None = None
    llm_default_model: str | None = None
    llm_timeout_seconds: float = 60.0
    # Connections the LLM client keeps per worker process: one per call in flight (HTTP/1.1).
    llm_max_connections: int = Field(default=2000, ge=1)

    # Periodic jobs run by beat (TOML file; see README)
    periodic_jobs_file: Path | None = None

    # Crash recovery (tasks/liveness.py): each consuming worker process renews a liveness key with
    # this TTL (every third of it); every reap interval one worker gives back the messages of
    # consumers whose key is gone on two passes. A SIGKILLed worker's jobs run again after about
    # TTL + 2-3 intervals; a live worker's long task is never handed out twice.
    worker_liveness_ttl_seconds: float = Field(default=10.0, gt=1)
    worker_reap_interval_seconds: float = Field(default=3.0, gt=0.1)

    # Input bounds: how far ahead a job may be scheduled (delay_seconds or run_at; 422 beyond).
    # A scheduled job's record is kept until it is due plus JOB_TTL_SECONDS.
    max_delay_seconds: int = Field(default=30 * 24 * 3600, ge=0)
    # The request line and headers of one request, together (431 beyond; uvicorn's httptools
    # protocol has no limit of its own).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)

    # Endpoints (the API's side): after rotate-secret the previous secret also signs for this long
    # (unless the request names its own grace).
    endpoint_secret_grace_seconds: int = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)

    # GET /metrics on the API's own port, open like most exporters (gateway/metrics.py: counts
    # and route templates only, no ids or payloads); false: no route, no per-request counting.
    metrics_enabled: bool = True
    # A scrape reads queue state from Redis with this timeout: Redis down is `gateway_redis_up 0`
    # within about this long, never a hung or failed scrape.
    metrics_redis_timeout_seconds: float = Field(default=0.5, gt=0)
    # Observability. Log lines as JSON objects (one a line) or text; unset: json in production,
    # text in dev (core/logs.py).
    log_format: Literal["json", "text"] | None = None
    # Each worker process serves Prometheus metrics on this port (0: off); `gateway dev` gives its
    # workers this port plus the queue's index (tasks/metrics.py).
    worker_metrics_port: int = Field(default=9100, ge=0, le=65535)

    # OpenTelemetry: spans (ingest, job run, delivery attempt, event processing) go to this
    # OTLP/HTTP collector (e.g. http://localhost:4318) when set; needs the `otel` extra.
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = "webhook-gateway"
    # The operator console (/console, gateway/console/): an admin key signs in for this long (the
    # session lives in Redis, not in the cookie); wrong keys per client address per minute before
    # sign-in answers 429.
    console_session_seconds: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    console_signin_failures_per_minute: int = Field(default=5, ge=1)
    # GET /v1/jobs/{id}/stream and the console's job page (gateway/job_stream.py): streams open at
    # once per API process (503 with Retry-After beyond; each holds one Redis connection of a pool
    # of their own, never the ingest path's), and the seconds between keep-alive comments.
    stream_max_clients: int = Field(default=200, ge=1)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)

    @field_validator(
        "api_keys",
        "admin_api_keys",
        "signing_secrets",
        "outbound_allow_hosts",
        "outbound_allow_networks",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return _split(value)

    @model_validator(mode="after")
    def _visibility_covers_longest_task(self) -> Settings:
        longest = max(self.files_task_time_limit_seconds, self.default_task_time_limit_seconds)
        if self.visibility_timeout_seconds <= longest:
            raise ValueError(
                "VISIBILITY_TIMEOUT_SECONDS must exceed the longest task time limit, or a running "
                "task is delivered to a second worker"
            )
        return self

    @model_validator(mode="after")
    def _log_format_for_environment(self) -> Settings:
        if self.log_format is None:
            self.log_format = "json" if self.environment == "production" else "text"
        return self

    @model_validator(mode="after")
    def _refuse_placeholders_outside_dev(self) -> Settings:
        if self.environment == "dev":
            if not self.api_keys:
                self.api_keys = [SecretStr(DEV_API_KEY)]
            if self.accepts_dev_api_key and not self.admin_api_keys:
                # the README's examples read events and dead letters with the dev key
                self.admin_api_keys = [SecretStr(DEV_API_KEY)]
            return self
        for name, value in self.secret_values():
            if _is_placeholder(value):
                raise ValueError(f"{name} holds a placeholder value; set a real secret")
        if not self.api_keys and not self.admin_api_keys:
            raise ValueError("API_KEYS is empty; internal endpoints would be unusable")
        return self

    @property
    def redis_address(self) -> str:
        """REDIS_URL, or a Redis on this host's default port when it is unset."""
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def accepts_dev_api_key(self) -> bool:
        """Whether the README's published dev key opens /v1/* (said at start-up)."""
        return any(key.get_secret_value() == DEV_API_KEY for key in self.api_keys)

    @property
    def beat_alive_file(self) -> Path:
        """Touched by beat on every tick; `gateway beat --healthcheck` reads its age."""
        return self.data_dir / "beat-alive"

    @property
    def files_dir(self) -> Path:
        """Where uploaded and produced files live (the API writes, the workers read and write)."""
        return self.data_dir / "files"

    def secret_values(self) -> list[tuple[str, str]]:
        """(setting name, revealed value) of every secret setting, for the placeholder check."""
        pairs: list[tuple[str, str]] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            items = value if isinstance(value, list) else [value]
            pairs.extend(
                (name.upper(), item.get_secret_value())
                for item in items
                if isinstance(item, SecretStr)
            )
        return pairs

    def api_key_hashes(self) -> tuple[str, ...]:
        """SHA-256 hex of every accepted API key (admin keys are API keys too)."""
        return tuple(dict.fromkeys(_hashes(self.api_keys) + self.admin_key_hashes()))

    def admin_key_hashes(self) -> tuple[str, ...]:
        """SHA-256 hex of every admin API key."""
        return _hashes(self.admin_api_keys)


def _hashes(keys: list[SecretStr]) -> tuple[str, ...]:
    """Plain keys hashed; "sha256:<hex>" entries as given."""
    hashes = []
    for key in keys:
        raw = key.get_secret_value()
        hashes.append(
            raw.removeprefix("sha256:") if raw.startswith("sha256:") else hash_api_key(raw)
        )
    return tuple(hashes)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once; exits on invalid settings."""
    try:
        return Settings()
    except ValidationError as exc:
        # pydantic's own message echoes input values, secrets included: print only what is wrong
        raise SystemExit(f"invalid settings: {messages(exc, 'settings')}") from None
