"""``ImagesMiddleware``: serve the images routes inside any ASGI host, pass everything else on.

Pure ASGI (no ``BaseHTTPMiddleware``): requests for other paths, websockets and the host's
lifespan go to the wrapped app with the original ``receive`` and ``send``, untouched and unread.
Paths are matched below the mount point (``root_path``), as Starlette routes them.
"""

from __future__ import annotations

from typing import Any

from ._asgi import ASGIApp, Receive, Scope, Send, route_path
from .app import MODELS_PATH, ImagesApp
from .config import Settings

__all__ = ["ImagesMiddleware"]


class ImagesMiddleware:
    """Wrap ``app``; answer ``POST /v1/images/generations`` (and ``GET /v1/models``) ourselves.

    Usage::

        app = FastAPI()
        app.add_middleware(ImagesMiddleware, settings=Settings(default_model="local/sketch"))

    **Parameters:**

    * **app** - the host application.
    * **settings** - as for ``ImagesApp``; other keyword arguments go to ``ImagesApp`` too.
    * **serve_models** - also answer ``GET /v1/models`` (turn off if the host has its own).
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        serve_models: bool = True,
        **options: Any,
    ) -> None:
        self.app = app
        self.images = ImagesApp(settings, **options)
        self._paths = self.images.paths if serve_models else self.images.paths - {MODELS_PATH}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) in self._paths:
            await self.images(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def aclose(self) -> None:
        """Release the images app's resources (the host's own lifespan is never touched)."""
        await self.images.aclose()
