"""Which upstream providers the settings enable, built over one shared upstream client."""

from __future__ import annotations

import httpx

from mesh_images_asgi._config import Settings
from mesh_images_asgi._domain.jobs import Provider
from mesh_images_asgi._upstream.client import UpstreamClient, as_upstream_client
from mesh_images_asgi.providers.local import LocalProvider
from mesh_images_asgi.providers.openai import OpenAIProvider
from mesh_images_asgi.providers.vertex import vertex_provider

__all__ = ["build_providers"]


def build_providers(
    settings: Settings, client: UpstreamClient | httpx.AsyncClient
) -> dict[str, Provider]:
    """The providers these settings enable (``local`` always is), sharing one upstream client."""
    client = as_upstream_client(client)
    local = LocalProvider(
        settings.local_latency,
        threads=settings.local_render_threads,
        queue=settings.local_render_queue,
    )
    providers: dict[str, Provider] = {"local": local}
    openai_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if openai_key:
        providers["openai"] = OpenAIProvider(
            client,
            api_key=openai_key,
            base_url=settings.openai_base_url,
            organization=settings.openai_org_id,
            project=settings.openai_project_id,
        )
    vertex = vertex_provider(settings, client)
    if vertex is not None:
        providers["vertex"] = vertex
    return providers
