"""``ImagesMiddleware``: ours intercepted, everything else handed over untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from mesh_images_asgi import ImagesMiddleware, Settings
from mesh_images_asgi._core.asgi import Message, Receive, Scope, Send, route_path
from tests.helpers import decode_item

GEN = "/v1/images/generations"
SETTINGS = Settings(local_latency=0)


async def hello(request: Request) -> Response:
    return PlainTextResponse("host says hello")


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def numbers(request: Request) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        for number in range(5):
            yield f"{number}\n".encode()

    return StreamingResponse(parts(), media_type="text/plain")


async def host_models(request: Request) -> Response:
    return JSONResponse({"host": "models"})


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("ws ok")
    await websocket.close()


def host_app(lifespan_log: list[str] | None = None) -> Starlette:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if lifespan_log is not None:
            lifespan_log.append("startup")
        yield
        if lifespan_log is not None:
            lifespan_log.append("shutdown")

    return Starlette(
        routes=[
            Route("/hello", hello),
            Route("/echo", echo, methods=["POST"]),
            Route("/numbers", numbers),
            Route("/v1/models", host_models),
            WebSocketRoute("/ws", socket),
        ],
        lifespan=lifespan,
    )


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.mark.anyio
async def test_host_routes_answer_with_body_and_streaming_intact() -> None:
    app = ImagesMiddleware(host_app(), SETTINGS)
    payload = bytes(range(256)) * 1000
    async with client_for(app) as client:
        hello_response = await client.get("/hello")
        echo_response = await client.post("/echo", content=payload)
        numbers_response = await client.get("/numbers")
        image = await client.post(
            GEN, json={"model": "local/sketch", "prompt": "x", "size": "64x64"}
        )
    assert hello_response.text == "host says hello"
    assert echo_response.content == payload
    assert numbers_response.text == "0\n1\n2\n3\n4\n"
    assert image.status_code == 200
    assert decode_item(image.json()["data"][0]).size == (64, 64)
    await app.aclose()


@pytest.mark.anyio
async def test_other_requests_get_the_original_receive_and_send() -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def raw_host(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = ImagesMiddleware(raw_host, SETTINGS)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"untouched", "more_body": False}

    async def send(message: Message) -> None:
        return None

    scope = {"type": "http", "method": "POST", "path": "/other", "root_path": "", "headers": []}
    await app(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert seen[0][0] is scope
    lifespan_scope = {"type": "lifespan"}
    await app(lifespan_scope, receive, send)
    assert seen[1][0] is lifespan_scope  # its messages are observed: tests/hosts/test_lifespan.py


def test_websocket_and_host_lifespan_pass_through() -> None:
    log: list[str] = []
    app = ImagesMiddleware(host_app(log), SETTINGS)
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as websocket:
            assert websocket.receive_text() == "ws ok"
        assert log == ["startup"]
    assert log == ["startup", "shutdown"]


@pytest.mark.anyio
async def test_host_lifespan_state_is_untouched_under_lifespan_manager() -> None:
    log: list[str] = []
    app = ImagesMiddleware(host_app(log), SETTINGS)
    async with LifespanManager(app) as manager, client_for(manager.app) as client:
        assert (await client.get("/hello")).status_code == 200
        assert (
            await client.post(GEN, json={"model": "local/sketch", "prompt": "x", "size": "64x64"})
        ).status_code == 200
    assert log == ["startup", "shutdown"]
    await app.aclose()


@pytest.mark.anyio
async def test_models_route_can_be_left_to_the_host() -> None:
    ours = ImagesMiddleware(host_app(), SETTINGS)
    theirs = ImagesMiddleware(host_app(), SETTINGS, serve_models=False)
    async with client_for(ours) as a, client_for(theirs) as b:
        assert (await a.get("/v1/models")).json()["object"] == "list"
        assert (await b.get("/v1/models")).json() == {"host": "models"}
        assert (await a.get("/v1/models/local/default")).json()["id"] == "local/sketch"
        assert "x-request-id" not in (await b.get("/v1/models/local/sketch")).headers


@pytest.mark.anyio
async def test_wrong_method_on_our_path_is_405_from_the_middleware() -> None:
    app = ImagesMiddleware(host_app(), SETTINGS)
    async with client_for(app) as client:
        response = await client.get(GEN)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.anyio
async def test_mounted_under_a_prefix() -> None:
    inner = ImagesMiddleware(host_app(), SETTINGS)
    outer = Starlette(routes=[Mount("/api", app=inner), Route("/hello", hello)])
    async with client_for(outer) as client:
        image = await client.post(
            "/api" + GEN, json={"model": "local/sketch", "prompt": "x", "size": "64x64"}
        )
        host = await client.get("/api/hello")
        top = await client.get("/hello")
        unprefixed = await client.post(GEN, json={"model": "local/sketch", "prompt": "x"})
    assert image.status_code == 200
    assert host.text == "host says hello"
    assert top.text == "host says hello"
    assert unprefixed.status_code == 404  # outside the mount, the outer app has no such route
    await inner.aclose()


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/v1/images/generations", "", "/v1/images/generations"),
        ("/api/v1/images/generations", "/api", "/v1/images/generations"),  # Starlette >= 0.35
        ("/v1/images/generations", "/api", "/v1/images/generations"),  # stripping proxy
        ("/api", "/api", ""),
        ("/apiv1/images/generations", "/api", "/apiv1/images/generations"),  # segment boundary
        ("/api/v1/models", "/api", "/v1/models"),
    ],
)
def test_route_path_follows_starlette(path: str, root_path: str, expected: str) -> None:
    assert route_path({"path": path, "root_path": root_path}) == expected
