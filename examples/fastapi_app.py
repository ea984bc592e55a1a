"""A FastAPI service with the images API beside its own routes, auth dependency and CORS.

Two idiomatic ways in; pick one:

* ``create_app()``: ``app.add_middleware(ImagesMiddleware)``. ``POST /v1/images/generations`` and
  ``GET /v1/models`` are answered before FastAPI routing, so FastAPI dependencies (``current_user``
  below) do not run for them; CORS, added after it, wraps it and still applies.
* ``create_mounted_app()``: ``app.mount("/", ImagesApp())`` after the host's routes, which match
  first. Starlette runs no lifespan for mounted apps, so the host's lifespan opens and closes it
  with ``async with images:``.

Run from the repository root::

    uvicorn examples.fastapi_app:app
    uvicorn --factory examples.fastapi_app:create_mounted_app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.middleware.cors import CORSMiddleware

from mesh_images_asgi import ImagesApp, ImagesMiddleware, Settings

__all__ = ["ORIGINS", "app", "create_app", "create_mounted_app", "current_user"]

ORIGINS = ["https://app.example.com"]
_USERS = {"demo-token": "demo-user"}  # stands in for the host's real token check


def current_user(authorization: Annotated[str | None, Header()] = None) -> str:
    """The host's auth dependency: it guards the host's routes (not the images routes)."""
    user = _USERS.get((authorization or "").removeprefix("Bearer "))
    if user is None:
        raise HTTPException(401, "Unknown token.", headers={"WWW-Authenticate": "Bearer"})
    return user


def _host(app: FastAPI) -> FastAPI:
    @app.get("/hello")
    async def hello(user: Annotated[str, Depends(current_user)]) -> dict[str, str]:
        return {"hello": user}

    return app


def _with_cors(app: FastAPI) -> FastAPI:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=ORIGINS,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-request-id"],
    )
    return app


def create_app(settings: Settings | None = None) -> FastAPI:
    """The host with ``ImagesMiddleware`` (settings from the environment by default)."""
    app = _host(FastAPI(title="Host with the images middleware"))
    app.add_middleware(ImagesMiddleware, settings=settings)
    return _with_cors(app)  # added last, so outermost: CORS covers the images routes too


def create_mounted_app(settings: Settings | None = None) -> FastAPI:
    """The host with ``ImagesApp`` mounted at ``/`` behind its own routes."""
    images = ImagesApp(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with images:
            yield

    app = _host(FastAPI(title="Host with the images app mounted", lifespan=lifespan))
    app.mount("/", images)
    return _with_cors(app)


app = create_app()
