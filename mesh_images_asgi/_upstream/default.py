"""The one upstream HTTP client an app creates: an aiohttp session, behind ``transport``.

Users who pass their own ``httpx.AsyncClient`` to ``ImagesApp`` get it wrapped instead (see
``_upstream/client.py``; ``_upstream/aiohttp.py`` for why aiohttp).
"""

from __future__ import annotations

from mesh_images_asgi._config import Settings
from mesh_images_asgi._upstream.aiohttp import AiohttpUpstream

__all__ = ["create_upstream_client"]


def create_upstream_client(settings: Settings) -> AiohttpUpstream:
    """A client with a short connect timeout and no read timeout of its own: every call is made
    under its request's deadline (the model's ``upstream_timeout``, ``_routing/router.py``), which
    may be
    longer than ``MESH_IMAGES_UPSTREAM_TIMEOUT``."""
    return AiohttpUpstream(
        connect_timeout=settings.connect_timeout,
        max_connections=settings.max_upstream_connections,
        max_answer_bytes=settings.max_upstream_bytes,
    )
