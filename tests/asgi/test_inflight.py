"""Graceful shutdown: ``ImagesApp.drain`` refuses new generations, lets running ones finish,
then cuts the rest (a JSON request gets a 503, a stream an error event then ``[DONE]``)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._asgi.sse import DONE
from mesh_images_asgi._core.asgi import Message
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialSink,
    ProviderResult,
)


class Slow:
    name = "local"

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        await anyio.sleep(self.latency)
        return ProviderResult(images=[GeneratedImage(b64_json="aW1hZ2U=")], created=1)

    async def aclose(self) -> None:
        return None


class Call:
    """One request through the app, with what it sent back."""

    def __init__(self, app: ImagesApp, path: str = "/v1/images/generations", **body: Any) -> None:
        self.app, self.path = app, path
        self.body = json.dumps({"model": "local/sketch", "prompt": "x", **body}).encode()
        self.sent: list[Message] = []
        self.gone = anyio.Event()

    async def __call__(self) -> None:
        scope = {
            "type": "http",
            "method": "POST" if self.path.startswith("/v1/images") else "GET",
            "path": self.path,
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
        }

        async def receive() -> Message:
            if self.body:
                body, self.body = self.body, b""
                return {"type": "http.request", "body": body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            self.sent.append(message)

        await self.app(scope, receive, send)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))

    def events(self) -> list[bytes]:
        return [m["body"] for m in self.sent[1:] if m["body"]]


def app(latency: float, **settings: Any) -> ImagesApp:
    return ImagesApp(
        Settings(keepalive_interval=0.05, **settings), providers={"local": Slow(latency)}
    )


@pytest.mark.anyio
async def test_running_generations_finish_while_new_ones_are_refused() -> None:
    images = app(0.2, drain_timeout=5)
    running, late, health = Call(images), Call(images), Call(images, "/healthz")
    images._routes["/healthz"] = {"GET": images._health}
    async with anyio.create_task_group() as group:
        group.start_soon(running)
        await anyio.sleep(0.05)
        group.start_soon(images.drain)
        await anyio.sleep(0.01)
        await late()
        await health()
    assert running.status == 200
    assert "data" in running.json()
    assert (late.status, late.json()["error"]["code"]) == (503, "provider_not_available")
    assert late.headers[b"retry-after"] == b"1"
    assert health.status == 503


@pytest.mark.anyio
async def test_what_outlives_the_drain_timeout_is_cut_json_503_stream_error_then_done() -> None:
    images = app(30)
    plain, stream = Call(images), Call(images, stream=True)
    with anyio.fail_after(3):
        async with anyio.create_task_group() as group:
            group.start_soon(plain)
            group.start_soon(stream)
            await anyio.sleep(0.1)
            await images.drain(0.1)
    assert (plain.status, plain.json()["error"]["code"]) == (503, "provider_not_available")
    frames = stream.events()
    assert stream.status == 200
    assert frames[0].startswith(b'data: {"id"')
    assert json.loads(frames[-2][6:])["error"]["code"] == "provider_not_available"
    assert frames[-1] == DONE
    assert stream.sent[-1]["more_body"] is False


@pytest.mark.anyio
async def test_after_aclose_the_app_serves_again() -> None:
    images = app(0)
    await images.aclose()
    again = Call(images)
    await again()
    assert again.status == 200
