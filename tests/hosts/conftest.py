"""Fixtures of the host tests: every upstream client the package creates, recorded."""

from __future__ import annotations

import pytest

from mesh_images_asgi._asgi import app as app_module
from mesh_images_asgi._config import Settings
from mesh_images_asgi._upstream.client import UpstreamClient
from mesh_images_asgi._upstream.default import create_upstream_client


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[UpstreamClient]:
    """The upstream clients made by ``create_upstream_client`` during the test."""
    made: list[UpstreamClient] = []

    def recording(settings: Settings) -> UpstreamClient:
        client = create_upstream_client(settings)
        made.append(client)
        return client

    monkeypatch.setattr(app_module, "create_upstream_client", recording)
    return made
