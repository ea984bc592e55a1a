"""Configuration: environment variables first, then an optional TOML file, then defaults.

Gateway settings use the ``MESH_IMAGES_`` prefix; provider credentials use the names their own
SDKs use (``OPENAI_API_KEY``, ``GOOGLE_APPLICATION_CREDENTIALS``...). The TOML file is named by
``MESH_IMAGES_CONFIG`` (or ``mesh-images serve --config``) and holds the same keys in lower case,
plus ``[models."provider/name"]`` tables that extend the model catalog.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mesh_images_asgi._access.keys import GatewayKeys

__all__ = ["DEFAULT_MAX_UPSTREAM_BYTES", "ConfigError", "Settings"]

_config_file: ContextVar[Path | None] = ContextVar("mesh_images_config_file", default=None)


DEFAULT_MAX_UPSTREAM_BYTES = 512 * 2**20
"""The largest legitimate answer the shipped catalog allows, rounded up to a power of two:
gpt-image-2 at n=10 and its 8,294,400-pixel free-size limit, each image an incompressible RGBA PNG
(4 bytes a pixel) in base64 (4/3): 442 MB. ``tests/test_content_coding.py`` keeps it above the
catalog's largest answer."""


class ConfigError(ValueError):
    """The configuration cannot be used (for example, a config file that does not exist)."""


def _alias(name: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(name, name.lower()))


class Settings(BaseSettings):
    """Everything the gateway can be told. Pass keyword arguments to override any source."""

    model_config = SettingsConfigDict(
        env_prefix="MESH_IMAGES_",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,  # a misplaced secret must not be echoed by an error
    )

    default_model: str | None = None
    """Model used when a request names none (``MESH_IMAGES_DEFAULT_MODEL``)."""
    keepalive_interval: float = Field(default=15.0, gt=0)
    """Seconds of silence on a stream before a ``: ping`` is written."""
    send_timeout: float = Field(default=30.0, gt=0)
    """Seconds one write to a stream may take before the client counts as stalled."""
    upstream_timeout: float = Field(default=300.0, gt=0)
    """Deadline in seconds for one generation upstream."""
    connect_timeout: float = Field(default=5.0, gt=0)
    """Seconds to connect to an upstream."""
    max_upstream_connections: int = Field(default=256, ge=1)
    """Connections the shared upstream client may open (all providers together)."""
    max_upstream_bytes: int = Field(default=DEFAULT_MAX_UPSTREAM_BYTES, ge=1)
    """Largest upstream answer accepted, counted after decoding while it is read (502 past it)."""
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    """Largest request body accepted (413 past it)."""
    max_edit_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Largest ``POST /v1/images/edits`` body, either form (413 past it)."""
    max_edit_file_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    """Largest file in an edit's multipart form (OpenAI's limit; 413 past it)."""
    max_edit_files: int = Field(default=17, ge=1)
    """Files one edit's form may carry: 16 images and a mask (413 past it)."""
    local_latency: float = Field(default=2.0, ge=0)
    """Simulated latency of the embedded ``local`` provider, in seconds."""
    retired_models: Literal["refuse", "replace", "serve"] = "refuse"
    """A request for a retired model: 410 ``model_retired`` (refuse), served by its replacement
    (replace), or sent to the retired upstream id anyway (serve); see ``_routing/lifecycle.py``."""
    local_render_threads: int | None = Field(default=None, ge=1)
    """Generations the ``local`` provider renders at once, each in a thread (None: one per core)."""
    local_render_queue: int = Field(default=64, ge=0)
    """Generations that may wait to render; beyond them, 503 ``provider_not_available``."""

    # Resilience (docs/resilience.md): retries, fallbacks, breaker, bulkhead, BYOK, drain.
    max_attempts: int = Field(default=4, ge=1)
    """Upstream attempts one request may make, retries and fallbacks together."""
    retries_per_model: int = Field(default=2, ge=0)
    """Retries of a transient failure on the same model before its fallbacks are tried."""
    retry_backoff: float = Field(default=0.5, ge=0)
    """First retry delay in seconds; doubled each retry, with jitter (x0.5 to x1)."""
    retry_backoff_max: float = Field(default=8.0, ge=0)
    """Largest retry delay in seconds (before jitter)."""
    retry_after_max: float = Field(default=30.0, ge=0)
    """Longest upstream ``Retry-After`` honoured; a longer one moves on to the fallbacks."""
    attempt_timeout: float | None = Field(default=None, gt=0)
    """Seconds one attempt may take (None: the rest of the deadline); a timed-out attempt is
    retried while the deadline allows."""
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    """Share of a model's requests in the window that failed (unwell) that opens its circuit."""
    breaker_minimum_calls: int = Field(default=20, ge=1)
    """Requests the window must hold before the failure rate can open the circuit."""
    breaker_window: float = Field(default=60.0, ge=1)
    """Seconds of requests the failure rate is computed over."""
    breaker_cooldown: float = Field(default=30.0, gt=0)
    """Seconds an open circuit refuses calls before one probe is let through."""
    breaker_probe_timeout: float = Field(default=60.0, gt=0)
    """Seconds the half-open circuit's probe may take before it counts as a failure."""
    bulkhead_limit: int = Field(default=128, ge=1)
    """Concurrent upstream calls per provider (the embedded ``local`` renderer has its own bound:
    ``local_render_threads``)."""
    bulkhead_queue: int = Field(default=512, ge=0)
    """Calls that may wait for a provider's slot; beyond them, 503 ``provider_not_available``."""
    byok_fallback: bool = True
    """When a client's own provider key fails (auth, rate limit), use the gateway's credentials;
    false: 401/429 ``byok_fallback_disabled``."""
    vertex_token_uri: str = "https://oauth2.googleapis.com/token"
    """Where tokens for clients' own Vertex service accounts are minted (their ``token_uri`` is
    ignored, so a client cannot make the gateway call an address of its choosing)."""
    client_key_threads: int = Field(default=4, ge=1)
    """Worker threads that load the service-account keys clients bring (BYOK) and mint their
    tokens, at most; more such requests wait for one (the event loop never does)."""
    drain_timeout: float = Field(default=30.0, ge=0)
    """At shutdown, seconds in-flight generations may take to finish before they are cut."""
    config: Path | None = None
    """The TOML file these settings were read from, if any."""
    log_level: str = "info"

    # Operations (docs/operations.md): metrics, access log, tracing.
    log_prompts: bool = False
    """Put the prompt (its first 1,000 characters, redacted) in the access log line."""
    otel: bool | None = None
    """OpenTelemetry spans: true always, false never, unset when a tracer provider is set."""
    metrics_auth: bool = False
    """``GET /metrics`` of the standalone server asks for a gateway key (when keys are set)."""

    api_keys: GatewayKeys = ()
    """Gateway keys (``MESH_IMAGES_API_KEYS``, a JSON list, or ``[[keys]]`` tables in the TOML
    file). With none, nobody is asked for a key (see docs/security.md)."""
    redis_url: SecretStr | None = None
    """Redis shared by every gateway process: rate-limit counters and async jobs
    (``MESH_IMAGES_REDIS_URL``)."""
    redis_max_connections: int = Field(default=50, ge=1)
    """Connections each gateway process opens to Redis, at most, in each of its two pools (rate
    limits; async jobs); under a burst, requests wait for one (``redis_pool_timeout``) instead
    of taking the burst for an outage."""
    redis_pool_timeout: float = Field(default=2.0, gt=0)
    """Seconds a request waits for a Redis connection; past it, 503 ``service_unavailable``."""
    rate_limit_fail_open: bool = True
    """While Redis is unreachable: limit in memory per process (true) or refuse with 503 (false)."""
    body_timeout: float = Field(default=30.0, gt=0)
    """Seconds a client may take to send its whole request body (408 past it)."""
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    """Browser origins the standalone server answers CORS for (``MESH_IMAGES_CORS_ORIGINS``:
    comma-separated, or ``*``); none: no CORS headers (see ``_asgi/cors.py``)."""

    # Async jobs (docs/jobs.md): in the process, or in Redis with ``MESH_IMAGES_REDIS_URL``.
    job_concurrency: int = Field(default=16, ge=1)
    """Jobs one gateway process runs at the same time."""
    job_queue_size: int = Field(default=1000, ge=1)
    """Unfinished jobs (queued or running) the queue holds; past it, 503
    ``provider_not_available`` with ``Retry-After``."""
    job_lease: float = Field(default=60.0, gt=0)
    """Seconds a job stays with a worker that stopped renewing its lease (Redis); then another
    worker takes it up."""
    job_ttl: float = Field(default=24 * 3600.0, gt=0)
    """Seconds a job is kept after its submission, and its result after it finished."""
    job_redis_prefix: str = Field(default="mesh-images:jobs", min_length=1)
    """Prefix of the jobs' Redis keys: gateways sharing a prefix share their jobs."""
    job_webhook_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    """Hosts a job's ``X-Webhook-URL`` may name (comma-separated); none: webhooks are off."""
    job_webhook_secret: SecretStr | None = None
    """The HMAC key completion webhooks are signed with (``_routing.webhooks``)."""

    # Hosted image URLs (docs/image-store.md).
    store: str = Field(default="embedded", pattern=r"^(embedded|none|s3://[^/\s]+(/\S*)?)$")
    """Where ``response_format: "url"`` images go (``MESH_IMAGES_STORE``): ``embedded`` (files
    served by the gateway), ``s3://bucket/prefix``, or ``none`` (``data:`` URLs)."""
    store_dir: Path | None = None
    """The embedded store's directory (default: ``mesh-images/images`` in the user's cache)."""
    store_key: SecretStr | None = None
    """The embedded store's HMAC key (default: generated once, kept in the store directory)."""
    store_max_bytes: int = Field(default=1024**3, ge=1)
    """Disk the embedded store may use; past it, the oldest images are deleted first."""
    url_ttl: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    """Seconds a hosted image URL stays valid (S3 presigned URLs allow 7 days at most)."""
    store_tags: bool = True
    """Tag S3 objects for lifecycle rules (false for S3-compatible stores without object tags)."""
    public_url: str | None = Field(default=None, pattern=r"^https?://")
    """Public base of the embedded store's URLs (``https://images.example.com/api``); by default
    built from the request (scheme, ``Host``, root path), as Starlette's ``url_for`` does."""

    openai_api_key: SecretStr | None = _alias("OPENAI_API_KEY")
    openai_base_url: str = Field(
        default="https://api.openai.com/v1",
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
    )
    openai_org_id: str | None = _alias("OPENAI_ORG_ID")
    openai_project_id: str | None = _alias("OPENAI_PROJECT_ID")
    google_application_credentials: Path | None = _alias("GOOGLE_APPLICATION_CREDENTIALS")
    google_cloud_project: str | None = _alias("GOOGLE_CLOUD_PROJECT")
    google_cloud_location: str | None = _alias("GOOGLE_CLOUD_LOCATION")
    vertex_base_url: str | None = None
    """Override of the Vertex AI endpoint (``MESH_IMAGES_VERTEX_BASE_URL``)."""
    vertex_api_key: SecretStr | None = None
    """Vertex AI API key, "express mode" (``MESH_IMAGES_VERTEX_API_KEY``): sent as
    ``x-goog-api-key`` instead of an OAuth2 token from service-account or default credentials."""

    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Catalog entries to add or override, from the TOML file's ``[models."id"]`` tables."""

    @field_validator("cors_origins", "job_webhook_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        """``"https://a.example, https://b.example"`` from the environment; a list from TOML."""
        if isinstance(value, str):
            return tuple(origin.strip() for origin in value.split(",") if origin.strip())
        return value

    @model_validator(mode="before")
    @classmethod
    def _keys_tables(cls, data: Any) -> Any:
        """The TOML file names the key tables ``[[keys]]``."""
        if isinstance(data, dict) and "keys" in data:
            data = dict(data)
            keys = data.pop("keys")
            data.setdefault("api_keys", keys)
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        if path is None and os.environ.get("MESH_IMAGES_CONFIG"):
            path = Path(os.environ["MESH_IMAGES_CONFIG"])
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Read the environment and the TOML file (``config_file`` or ``MESH_IMAGES_CONFIG``)."""
        raw = config_file or os.environ.get("MESH_IMAGES_CONFIG") or None
        path = Path(raw) if raw else None
        if path is not None and not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        token = _config_file.set(path)
        try:
            if path is not None:
                overrides.setdefault("config", path)
            return cls(**overrides)
        finally:
            _config_file.reset(token)
