"""``ImagesMiddleware``: serve the images routes inside any ASGI host, pass everything else on.

Pure ASGI (no ``BaseHTTPMiddleware``): requests for other paths, websockets and the host's
lifespan go to the wrapped app with the original ``receive`` and ``send``, untouched and unread.
Paths are matched below the mount point (``root_path``), as Starlette routes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from ._asgi import ASGIApp, Receive, Scope, Send, route_path
from .app import MODELS_PATH, ImagesApp
from .catalog import Catalog
from .config import Settings
from .providers.base import Provider

__all__ = ["ImagesMiddleware"]


class ImagesMiddleware:
    """Wrap ``app``; answer ``POST /v1/images/generations`` (and ``GET /v1/models``) ourselves.

    Usage::

        app = FastAPI()
        app.add_middleware(ImagesMiddleware, settings=Settings(default_model="local/sketch"))

    **Parameters:**

    * **app** - the host application.
    * **serve_models** - also answer ``GET /v1/models`` (turn off if the host has its own).
    * **settings**, **providers**, **catalog**, **http_client** - as for ``ImagesApp``.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        serve_models: bool = True,
        providers: Mapping[str, Provider] | None = None,
        catalog: Catalog | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.app = app
        self.images = ImagesApp(
            settings, providers=providers, catalog=catalog, http_client=http_client
        )
        self._paths = self.images.paths if serve_models else self.images.paths - {MODELS_PATH}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) in self._paths:
            await self.images(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def aclose(self) -> None:
        """Release the images app's resources (the host's own lifespan is never touched)."""
        await self.images.aclose()
