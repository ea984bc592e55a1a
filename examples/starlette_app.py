"""A Starlette service: the images app under a ``Mount``, or stacked with its middleware.

* ``create_app()``: ``Mount("/images", ImagesApp())``, so the endpoint is
  ``POST /images/v1/images/generations``; the host's lifespan opens and closes it.
* ``create_stacked_app()``: ``Middleware(ImagesMiddleware)`` in the host's middleware list, inside
  TrustedHost, CORS and GZip (the first in the list is the outermost). GZip compresses our JSON
  and leaves streams alone (Starlette skips ``text/event-stream``).

Run from the repository root::

    uvicorn examples.starlette_app:app
    uvicorn --factory examples.starlette_app:create_stacked_app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from mesh_images_asgi import ImagesApp, ImagesMiddleware, Settings

__all__ = ["ALLOWED_HOSTS", "ORIGINS", "app", "create_app", "create_stacked_app"]

ALLOWED_HOSTS = ["127.0.0.1", "localhost", "images.example.com"]
ORIGINS = ["https://app.example.com"]


async def hello(request: Request) -> JSONResponse:
    """The host's own route."""
    return JSONResponse({"hello": "from starlette", "root_path": request.scope.get("root_path")})


def _middleware() -> list[Middleware]:
    return [
        Middleware(TrustedHostMiddleware, allowed_hosts=ALLOWED_HOSTS),
        Middleware(CORSMiddleware, allow_origins=ORIGINS, expose_headers=["x-request-id"]),
        Middleware(GZipMiddleware, minimum_size=500),
    ]


def create_app(settings: Settings | None = None) -> Starlette:
    """The host with ``ImagesApp`` mounted at ``/images``."""
    images = ImagesApp(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with images:  # Starlette runs no lifespan for mounted apps
            yield

    return Starlette(
        routes=[Route("/hello", hello), Mount("/images", app=images)],
        middleware=_middleware(),
        lifespan=lifespan,
    )


def create_stacked_app(settings: Settings | None = None) -> Starlette:
    """The host with ``ImagesMiddleware`` innermost in its middleware stack."""
    return Starlette(
        routes=[Route("/hello", hello)],
        middleware=[*_middleware(), Middleware(ImagesMiddleware, settings=settings)],
    )


app = create_app()
