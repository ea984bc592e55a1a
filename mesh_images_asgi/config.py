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
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["ConfigError", "Settings"]

_config_file: ContextVar[Path | None] = ContextVar("mesh_images_config_file", default=None)


class ConfigError(ValueError):
    """The configuration cannot be used (for example, a config file that does not exist)."""


def _alias(name: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(name, name.lower()))


class Settings(BaseSettings):
    """Everything the gateway can be told. Pass keyword arguments to override any source."""

    model_config = SettingsConfigDict(
        env_prefix="MESH_IMAGES_", extra="ignore", populate_by_name=True
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
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    """Largest request body accepted (413 past it)."""
    local_latency: float = Field(default=2.0, ge=0)
    """Simulated latency of the embedded ``local`` provider, in seconds."""
    config: Path | None = None
    """The TOML file these settings were read from, if any."""
    log_level: str = "info"

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
