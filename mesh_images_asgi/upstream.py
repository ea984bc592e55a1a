"""The one upstream HTTP client an app creates: ``http1.py``'s pool, behind ``transport``.

Users who pass their own ``httpx.AsyncClient`` to ``ImagesApp`` get it wrapped instead (see
``transport.py`` for why the default is not httpx).
"""

from __future__ import annotations

from .config import Settings
from .transport import Http1Upstream

__all__ = ["create_upstream_client"]


def create_upstream_client(settings: Settings) -> Http1Upstream:
    """A client with a short connect timeout and no read timeout of its own: every call is made
    under its request's deadline (the model's ``upstream_timeout``, ``routing.py``), which may be
    longer than ``MESH_IMAGES_UPSTREAM_TIMEOUT``."""
    return Http1Upstream(
        connect_timeout=settings.connect_timeout,
        max_connections=settings.max_upstream_connections,
    )
