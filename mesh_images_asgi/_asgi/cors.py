"""CORS for the standalone server (``MESH_IMAGES_CORS_ORIGINS``), with Starlette's middleware.

A browser app on an allowed origin may call every route and read the headers it needs: the
request id, the ``x-mesh-*`` routing and cost headers, the rate-limit headers, ``Retry-After``
and ``x-should-retry``. No credentials (cookies) are allowed: clients authenticate with the
``Authorization`` header. A host that mounts ``ImagesMiddleware`` runs its own CORS middleware.
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh_images_asgi._config import ConfigError
from mesh_images_asgi._core.asgi import ASGIApp

__all__ = ["EXPOSED_HEADERS", "with_cors"]

EXPOSED_HEADERS = (
    "x-request-id",
    "x-mesh-cost-usd",
    "x-mesh-routing-model",
    "x-mesh-routing-attempts",
    "x-mesh-routing-fallback",
    "x-byok-fallback-triggered",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "retry-after",
    "x-should-retry",
)


def with_cors(app: ASGIApp, origins: Sequence[str]) -> ASGIApp:
    """``app`` behind Starlette's ``CORSMiddleware`` for ``origins`` (``"*"``: any)."""
    try:
        from starlette.middleware.cors import CORSMiddleware  # the server extra's dependency
    except ImportError:
        raise ConfigError(
            "MESH_IMAGES_CORS_ORIGINS needs Starlette: pip install 'mesh-images-asgi[server]'."
        ) from None

    return CORSMiddleware(
        app,
        allow_origins=list(origins),
        allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=list(EXPOSED_HEADERS),
        max_age=600,
    )
