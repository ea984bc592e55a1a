"""Lifespan: our resources start after the host's startup and close after its shutdown, the
host's messages pass unchanged, hosts without lifespan (Django) still get them started and
closed, and with no lifespan at all nothing is left open when the event loop ends."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from examples import fastapi_app, starlette_app
from examples.django_project import asgi as django_asgi
from mesh_images_asgi import ImagesApp, ImagesMiddleware, Settings
from mesh_images_asgi._core.asgi import ASGIApp, Message, Receive, Scope, Send
from mesh_images_asgi._upstream.client import UpstreamClient
from tests.emulators.openai import OpenAIEmulator
from tests.hosts.support import GEN
from tests.support.live import serve_process
from tests.support.procfs import connections_to

SETTINGS = Settings(local_latency=0)
IMAGE = {"model": "local/sketch", "prompt": "x", "size": "64x64"}


async def no_lifespan_host(scope: Scope, receive: Receive, send: Send) -> None:
    """A host that ignores lifespan by returning at once (as many hand-written apps do)."""
    if scope["type"] == "lifespan":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


# name: (build the host, where our routes are)
HOSTS: dict[str, tuple[Callable[[Settings], ASGIApp], str]] = {
    "images-app": (ImagesApp, ""),
    "fastapi-middleware": (fastapi_app.create_app, ""),
    "fastapi-mount": (fastapi_app.create_mounted_app, ""),
    "starlette-mount": (starlette_app.create_app, "/images"),
    "starlette-stacked": (starlette_app.create_stacked_app, ""),
    "django": (django_asgi.create_application, ""),
    "host-returning-at-once": (lambda settings: ImagesMiddleware(no_lifespan_host, settings), ""),
}


def asgi_client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")


@pytest.mark.anyio
@pytest.mark.parametrize("host", HOSTS)
async def test_no_client_left_open_after_shutdown(host: str, clients: list[UpstreamClient]) -> None:
    build, prefix = HOSTS[host]
    app = build(SETTINGS)
    async with LifespanManager(app) as manager:
        assert len(clients) == 1  # created at startup, not on first use
        assert not clients[0].is_closed
        async with asgi_client(manager.app) as client:
            response = await client.post(prefix + GEN, json=IMAGE)
        assert response.status_code == 200
    assert len(clients) == 1
    assert clients[0].is_closed


class FakeServer:
    """A server's side of the lifespan protocol, recording what it sends and receives. As real
    servers do, it sends ``lifespan.shutdown`` only after a complete startup, and stops the
    lifespan task after a failed one."""

    def __init__(self, observe: Callable[[str], None] = lambda kind: None) -> None:
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self._observe = observe
        self._started = anyio.Event()
        self._stop = anyio.CancelScope()

    async def receive(self) -> Message:
        if self.sent:
            await self._started.wait()
            message: Message = {"type": "lifespan.shutdown"}
        else:
            message = {"type": "lifespan.startup"}
        self.sent.append(message)
        return message

    async def send(self, message: Message) -> None:
        self._observe(message["type"])
        self.received.append(message)
        if message["type"] == "lifespan.startup.failed":
            self._stop.cancel()
        self._started.set()

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        with self._stop, anyio.fail_after(5):
            await app(scope, self.receive, self.send)


class RecordingHost:
    """A host with a lifespan of its own that records what it gets and what it sends."""

    def __init__(self, observe: Callable[[str], None], fail_startup: bool = False) -> None:
        self.scopes: list[Scope] = []
        self.received: list[Message] = []
        self.sent: list[Message] = []
        self._observe = observe
        self._fail_startup = fail_startup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        self.received.append(await receive())
        self._observe("host startup")
        if self._fail_startup:
            await self._send(send, {"type": "lifespan.startup.failed", "message": "host broke"})
            return
        await self._send(send, {"type": "lifespan.startup.complete"})
        self.received.append(await receive())
        self._observe("host shutdown")
        await self._send(send, {"type": "lifespan.shutdown.complete"})

    async def _send(self, send: Send, message: Message) -> None:
        self.sent.append(message)
        await send(message)


@pytest.mark.anyio
async def test_host_lifespan_passes_unchanged_and_ours_nests_inside_it(
    clients: list[UpstreamClient],
) -> None:
    log: list[str] = []

    def observe(event: str) -> None:
        log.append(f"{event}: clients {[c.is_closed for c in clients]}")

    host = RecordingHost(observe)
    server = FakeServer(observe)
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {"host": 1}}
    await server.run(ImagesMiddleware(host, SETTINGS), scope)
    assert host.scopes == [scope]
    assert host.scopes[0] is scope
    assert len(host.received) == len(server.sent) == 2
    assert all(a is b for a, b in zip(host.received, server.sent, strict=True))
    assert len(server.received) == len(host.sent) == 2
    assert all(a is b for a, b in zip(server.received, host.sent, strict=True))
    assert log == [
        "host startup: clients []",  # ours start once the host's startup is done...
        "lifespan.startup.complete: clients [False]",  # ...and before the server hears of it
        "host shutdown: clients [False]",  # the host's shutdown can still use ours
        "lifespan.shutdown.complete: clients [True]",
    ]


@pytest.mark.anyio
async def test_host_startup_failure_is_forwarded_and_ours_never_start(
    clients: list[UpstreamClient],
) -> None:
    host = RecordingHost(lambda event: None, fail_startup=True)
    server = FakeServer()
    await server.run(ImagesMiddleware(host, SETTINGS), {"type": "lifespan"})
    assert server.received == host.sent
    assert server.received[0] is host.sent[0]
    assert clients == []


@pytest.mark.anyio
async def test_our_startup_failure_fails_the_servers_startup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(settings: Settings) -> httpx.AsyncClient:
        raise RuntimeError("no client today")

    monkeypatch.setattr("mesh_images_asgi._asgi.app.create_upstream_client", broken)
    host = RecordingHost(lambda event: None)
    server = FakeServer()
    await server.run(ImagesMiddleware(host, SETTINGS), {"type": "lifespan"})
    assert host.sent == [{"type": "lifespan.startup.complete"}]
    assert server.received == [
        {"type": "lifespan.startup.failed", "message": "mesh-images: no client today"}
    ]


@pytest.mark.anyio
async def test_a_host_failing_during_startup_fails_as_without_us(
    clients: list[UpstreamClient],
) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("host startup crashed")

    with pytest.raises(RuntimeError, match="host startup crashed"):
        await FakeServer().run(ImagesMiddleware(failing, SETTINGS), {"type": "lifespan"})
    assert clients == []


@pytest.fixture(scope="module")
def openai_url() -> Iterator[str]:
    """An emulated OpenAI API, so that a request really opens an upstream connection."""
    with OpenAIEmulator().serve() as url:
        yield url


def _openai_settings(url: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": OpenAIEmulator().api_key, "OPENAI_BASE_URL": url}


OPENAI_IMAGE = {"model": "openai/gpt-image-2", "prompt": "x", "size": "1024x1024"}
LAZY_HOSTS: dict[str, Callable[[Settings], ASGIApp]] = {
    "images-app": ImagesApp,
    "django": django_asgi.create_application,
}


@pytest.mark.parametrize("host", LAZY_HOSTS)
def test_without_lifespan_the_client_closes_with_its_event_loop(
    host: str, clients: list[UpstreamClient], openai_url: str
) -> None:
    app = LAZY_HOSTS[host](
        Settings(openai_api_key=OpenAIEmulator().api_key, openai_base_url=openai_url)
    )

    upstream = {int(openai_url.rsplit(":", 1)[1].split("/")[0])}

    async def one_request() -> None:
        async with asgi_client(app) as client:
            response = await client.post(GEN, json=OPENAI_IMAGE)
        assert response.status_code == 200, response.text
        # A real upstream connection was opened, and is kept alive.
        assert connections_to(upstream)["ESTABLISHED"] == 1

    for loops in (1, 2):  # each event loop gets its own client, closed when it ends
        asyncio.run(one_request())
        assert len(clients) == loops
        assert clients[-1].is_closed
        assert sum(connections_to(upstream).values()) == 0


LAZY_TARGETS = {
    "standalone": "mesh_images_asgi.main:app",
    "django": "examples.django_project.asgi:application",
}


@pytest.mark.parametrize("target", LAZY_TARGETS)
def test_lifespan_off_server_exits_without_unclosed_warnings(target: str, openai_url: str) -> None:
    command = [sys.executable, "-W", "always::ResourceWarning", "-m", "uvicorn"]
    command += [LAZY_TARGETS[target], "--port", "{port}", "--lifespan", "off"]
    with serve_process(command, env=_openai_settings(openai_url), name="uvicorn") as server:
        response = httpx.post(server.url + GEN, json=OPENAI_IMAGE, timeout=10)
        assert response.status_code == 200, response.text
    assert server.returncode == 0, server.stderr
    assert "Unclosed" not in server.stderr
    assert "ResourceWarning" not in server.stderr
