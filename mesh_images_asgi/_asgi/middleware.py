"""``ImagesMiddleware``: serve the images routes inside any ASGI host, pass everything else on.

Pure ASGI (no ``BaseHTTPMiddleware``): requests for other paths and websockets go to the wrapped
app with the original ``receive`` and ``send``, untouched and unread. The host's lifespan goes to
it too, observed through thin wrappers so that our resources start after the host's startup and
close after its shutdown, and are still started and closed when the host has no lifespan (Django):
see ``_asgi/lifespan.py``. Paths are matched below the mount point (``root_path``), as Starlette
routes
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from mesh_images_asgi._asgi.app import MODEL_PATH, MODELS_PATH, ImagesApp
from mesh_images_asgi._asgi.lifespan import run_host_lifespan
from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.asgi import ASGIApp, Receive, Scope, Send, route_path
from mesh_images_asgi._domain.catalog import Catalog
from mesh_images_asgi._domain.jobs import Provider
from mesh_images_asgi._observe.metrics import Metrics
from mesh_images_asgi._store.base import ImageStore

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["ImagesMiddleware"]


class ImagesMiddleware:
    """Wrap ``app``; answer ``POST /v1/images/generations`` (and ``GET /v1/models``) ourselves.

    Usage::

        app = FastAPI()
        app.add_middleware(ImagesMiddleware, settings=Settings(default_model="local/sketch"))

    **Parameters:**

    * **app** - the host application.
    * **serve_models** - also answer ``GET /v1/models`` and ``GET /v1/models/{id}`` (turn off
      if the host has its own).
    * **settings**, **providers**, **extra_providers**, **catalog**, **http_client**, **metrics**,
      **tracer_provider**, **store** - as for ``ImagesApp``; the images app is
      ``middleware.images`` and its metrics ``middleware.images.metrics`` (pass your own
      ``Metrics`` to mount them before the middleware is built: ``docs/operations.md``).
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        serve_models: bool = True,
        providers: Mapping[str, Provider] | None = None,
        extra_providers: Mapping[str, Provider] | None = None,
        catalog: Catalog | None = None,
        http_client: httpx.AsyncClient | None = None,
        metrics: Metrics | None = None,
        tracer_provider: TracerProvider | None = None,
        store: ImageStore | None = None,
    ) -> None:
        self.app = app
        self.images = ImagesApp(
            settings,
            providers=providers,
            extra_providers=extra_providers,
            catalog=catalog,
            http_client=http_client,
            metrics=metrics,
            tracer_provider=tracer_provider,
            store=store,
        )
        self._skipped = frozenset() if serve_models else frozenset({MODELS_PATH, MODEL_PATH})

    def _serves(self, scope: Scope) -> bool:
        route = self.images.route(route_path(scope))
        return route is not None and route not in self._skipped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._serves(scope):
            await self.images(scope, receive, send)
        elif scope["type"] == "lifespan":
            await run_host_lifespan(
                self.app,
                scope,
                receive,
                send,
                startup=self.images.__aenter__,
                shutdown=self.images.aclose,
                fallback=self.images,
            )
        else:
            await self.app(scope, receive, send)

    async def aclose(self) -> None:
        """Release the images app's resources now (the host's own resources are never touched)."""
        await self.images.aclose()
