"""``ImagesApp``: the pure ASGI application serving the images routes.

This is the only module that knows both HTTP and the image service: it routes, reads and checks
the body, hands the validated request to the service, and writes the JSON (or, for
``"stream": true``, hands the job to the SSE writer). Every error leaves as the contract's
envelope with ``x-request-id``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import httpx

from ._asgi import Receive, Scope, Send, get_header, route_path, send_bytes
from .body import ClientDisconnected, check_body_headers, read_body
from .catalog import Catalog, load_catalog
from .config import Settings
from .disconnect import call_until_disconnect
from .errors import GatewayError, MethodNotAllowed, NotFound
from .providers import build_providers
from .providers.base import Provider
from .request_id import request_id_from_header
from .responses import images_response
from .schemas import parse_request
from .service import ImageService
from .sse import stream_generation
from .upstream import create_upstream_client

__all__ = ["GENERATIONS_PATH", "MODELS_PATH", "ImagesApp"]

logger = logging.getLogger("mesh_images_asgi")

GENERATIONS_PATH = "/v1/images/generations"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/healthz"

Handler = Callable[["ImagesApp", Scope, Receive, Send, str], Awaitable[None]]
_JSON = b"application/json"


class _InternalError(GatewayError):
    status = 500
    code = "internal_error"


async def _send_json(
    send: Send,
    status: int,
    payload: Mapping[str, Any],
    request_id: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send_bytes(
        send, status, body, _JSON, [(b"x-request-id", request_id.encode()), *(headers or [])]
    )


async def _send_error(send: Send, error: GatewayError, request_id: str) -> None:
    await send_bytes(
        send,
        error.status,
        error.envelope(request_id),
        _JSON,
        [(b"x-request-id", request_id.encode()), *error.response_headers()],
    )


class ImagesApp:
    """The images API as a pure ASGI app.

    Usage::

        app = ImagesApp()                      # settings from the environment
        app = ImagesApp(Settings(default_model="local/sketch"))

    **Parameters:**

    * **settings** - a ``Settings``; by default read from the environment and config file.
    * **providers** - replace the providers the settings would enable (tests, custom upstreams).
    * **catalog** - replace the model catalog.
    * **http_client** - the ``httpx.AsyncClient`` for upstream calls; yours to close. By default
      one is created (over a fast aiohttp transport) and closed with the app.
    * **health** - also serve ``GET /healthz`` (the standalone server does).

    Resources are created at lifespan startup, or on first use when the host runs no lifespan,
    and released by lifespan shutdown or ``await app.aclose()``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        providers: Mapping[str, Provider] | None = None,
        catalog: Catalog | None = None,
        http_client: httpx.AsyncClient | None = None,
        health: bool = False,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load()
        self._providers = providers
        self._catalog = catalog
        self._service: ImageService | None = None
        self._http_client = http_client
        self._owned_client: httpx.AsyncClient | None = None
        self._routes: dict[str, dict[str, Handler]] = {
            GENERATIONS_PATH: {"POST": ImagesApp._generate},
            MODELS_PATH: {"GET": ImagesApp._models},
        }
        if health:
            self._routes[HEALTH_PATH] = {"GET": ImagesApp._health}

    @property
    def paths(self) -> frozenset[str]:
        """The route paths this app answers."""
        return frozenset(self._routes)

    @property
    def service(self) -> ImageService:
        """The image service, created on first use."""
        if self._service is None:
            catalog = (
                self._catalog if self._catalog is not None else load_catalog(self.settings.models)
            )
            providers = self._providers
            if providers is None:
                client = self._http_client
                if client is None:
                    client = self._owned_client = create_upstream_client(self.settings)
                providers = build_providers(self.settings, client)
            self._service = ImageService(self.settings, catalog, providers)
            self._service.log_enabled()
        return self._service

    async def aclose(self) -> None:
        """Release the providers' resources; the app can be used again afterwards."""
        service, self._service = self._service, None
        client, self._owned_client = self._owned_client, None
        if service is not None:
            await service.aclose()
        if client is not None:
            await client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        request_id = request_id_from_header(get_header(scope, b"x-request-id"))
        try:
            await self._dispatch(scope, receive, send, request_id)
        except ClientDisconnected:
            return
        except GatewayError as error:
            await _send_error(send, error, request_id)
        except Exception:
            logger.exception("mesh-images: unhandled error in request %s", request_id)
            await _send_error(send, _InternalError("Internal error."), request_id)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        methods = self._routes.get(route_path(scope))
        if methods is None:
            raise NotFound(f"No route for {scope['path']!r}.")
        handler = methods.get(scope["method"])
        if handler is None:
            raise MethodNotAllowed(scope["method"], sorted(methods))
        await handler(self, scope, receive, send, request_id)

    async def _generate(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        max_bytes = self.settings.max_body_bytes
        check_body_headers(scope, max_bytes)
        request = parse_request(await read_body(receive, max_bytes))
        service = self.service
        job = service.prepare(request)
        if request.stream:
            await stream_generation(service, job, receive, send, request_id, self.settings)
            return
        result = await call_until_disconnect(receive, lambda: service.generate(job))
        if result is not None:
            await _send_json(send, 200, images_response(job, result), request_id)

    async def _models(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        page = self.service.models_page()
        wanted = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("type")
        if wanted and "image" not in wanted:
            page = {**page, "data": []}
        await _send_json(send, 200, page, request_id)

    async def _health(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        await _send_json(send, 200, {"status": "ok"}, request_id)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    _ = self.service
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
