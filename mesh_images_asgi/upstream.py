"""The one upstream HTTP client an app creates: aiohttp, behind the ``transport`` interface.

Users who pass their own ``httpx.AsyncClient`` to ``ImagesApp`` get it wrapped instead (see
``transport.py`` for why the default is not httpx).
"""

from __future__ import annotations

from .config import Settings
from .transport import AiohttpUpstream

__all__ = ["create_upstream_client"]


def create_upstream_client(settings: Settings) -> AiohttpUpstream:
    """A client with explicit timeouts: short connect, a read long enough for a slow generation."""
    return AiohttpUpstream(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.upstream_timeout,
        max_connections=settings.max_upstream_connections,
    )
