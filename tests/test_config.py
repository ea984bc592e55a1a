"""Settings: environment first, then the TOML file, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_images_asgi import Settings
from mesh_images_asgi._config import ConfigError
from mesh_images_asgi.cli import main

CONFIG = """
default_model = "local/sketch"
local_latency = 0.5
keepalive_interval = 3

[models."local/poster"]
provider = "local"
upstream = "sketch"
sizes = ["512x768"]
default_size = "512x768"
"""


def test_defaults() -> None:
    settings = Settings()
    assert settings.keepalive_interval == 15
    assert settings.upstream_timeout == 300
    assert settings.max_body_bytes == 32 * 1024 * 1024
    assert settings.openai_api_key is None


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_IMAGES_KEEPALIVE_INTERVAL", "0.2")
    monkeypatch.setenv("MESH_IMAGES_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456789")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    settings = Settings()
    assert settings.keepalive_interval == 0.2
    assert settings.max_body_bytes == 1024
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-test-123456789"
    assert "sk-test" not in repr(settings)
    assert settings.openai_base_url == "http://127.0.0.1:9/v1"


def test_toml_file_with_environment_winning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("MESH_IMAGES_LOCAL_LATENCY", "0.25")
    settings = Settings.load(path)
    assert settings.default_model == "local/sketch"
    assert settings.keepalive_interval == 3
    assert settings.local_latency == 0.25  # the environment wins over the file
    assert settings.models["local/poster"]["sizes"] == ["512x768"]
    assert settings.config == path
    monkeypatch.setenv("MESH_IMAGES_CONFIG", str(path))
    assert Settings().default_model == "local/sketch"


def test_missing_config_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError):
        Settings.load(tmp_path / "missing.toml")
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
