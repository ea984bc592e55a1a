"""Streams over real HTTP: uvicorn and hypercorn, the meshapi SDK, httpx + httpx-sse, and a
FastAPI host with ``BaseHTTPMiddleware`` and ``GZipMiddleware`` in front."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from httpx_sse import aconnect_sse
from meshapi import AsyncMeshAPI, ImageGenerationParams, MeshAPI

from mesh_images_asgi import ImagesApp, ImagesMiddleware, Settings
from mesh_images_asgi._domain.jobs import GenerationJob, PartialSink, ProviderResult
from mesh_images_asgi.providers.local import LocalProvider
from tests.helpers import decode_image
from tests.support.live import serve, serve_hypercorn

GEN = "/v1/images/generations"
BODY = {"model": "local/sketch", "prompt": "a lighthouse", "size": "64x64", "stream": True}
Server = Callable[[Any], AbstractContextManager[str]]
SERVERS: list[Server] = [serve, serve_hypercorn]


class RecordingProvider(LocalProvider):
    """The local renderer, recording its event loop, its calls and their cancellation."""

    def __init__(self, latency: float) -> None:
        super().__init__(latency=latency)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0
        self.cancelled = 0
        self.cancellation = threading.Event()

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        self.loop = asyncio.get_running_loop()
        self.calls += 1
        try:
            return await super().generate(job, on_partial)
        except asyncio.CancelledError:
            self.cancelled += 1
            self.cancellation.set()
            raise


def images_app(latency: float = 1.5, interval: float = 0.2) -> tuple[ImagesApp, RecordingProvider]:
    provider = RecordingProvider(latency)
    app = ImagesApp(Settings(keepalive_interval=interval), providers={"local": provider})
    return app, provider


async def read_stream(base_url: str, body: dict[str, Any]) -> list[tuple[float, bytes]]:
    """Every SSE frame with the time it arrived, read from the raw socket stream."""
    frames: list[tuple[float, bytes]] = []
    buffer = b""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        started = time.monotonic()
        async with client.stream("POST", GEN, json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert "content-length" not in response.headers
            async for chunk in response.aiter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    frames.append((time.monotonic() - started, frame))
    return frames


class GatedProvider(LocalProvider):
    """The local renderer, held until the test lets it go (``release``, from any thread)."""

    def __init__(self) -> None:
        super().__init__(latency=0)
        self.release = threading.Event()

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        await anyio.to_thread.run_sync(self.release.wait)
        return await super().generate(job, on_partial)


@pytest.mark.anyio
@pytest.mark.parametrize("server", SERVERS, ids=["uvicorn", "hypercorn"])
async def test_pings_flow_while_the_upstream_works(server: Server) -> None:
    # The upstream answers only once the client has read three pings off the socket: pings are
    # delivered through the server while the generation runs, not buffered until it ends.
    # (Their timing is tested on fake loop time in tests/asgi/test_sse.py.)
    provider = GatedProvider()
    app = ImagesApp(Settings(keepalive_interval=0.05), providers={"local": provider})
    frames: list[bytes] = []
    with server(app) as base_url:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=30) as client,
            client.stream("POST", GEN, json=BODY) as response,
        ):
            assert response.status_code == 200
            buffer = b""
            async for chunk in response.aiter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    frames.append(frame)
                    if frames.count(b": ping") == 3:
                        provider.release.set()
    assert json.loads(frames[0][6:])["status"] == "processing"
    assert frames[1:4] == [b": ping"] * 3
    final = json.loads(frames[-2][6:])
    assert final["status"] == "completed"
    url = final["data"][0]["url"]
    assert decode_image(base64.b64decode(url.split(",", 1)[1])).size == (64, 64)
    assert frames[-1] == b"data: [DONE]"


@pytest.mark.anyio
async def test_httpx_sse_reads_the_events() -> None:
    app, _ = images_app(latency=0.3, interval=0.1)
    with serve(app) as base_url:
        async with (
            httpx.AsyncClient(base_url=base_url) as client,
            aconnect_sse(
                client, "POST", GEN, json={**BODY, "response_format": "b64_json", "n": 2}
            ) as source,
        ):
            events = [event.data async for event in source.aiter_sse()]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    assert [chunk["status"] for chunk in chunks] == ["processing", "completed"]
    assert len(chunks[-1]["data"]) == 2
    image = decode_image(base64.b64decode(chunks[-1]["data"][0]["b64_json"]))
    assert image.size == (64, 64)


@pytest.fixture(scope="module")
def sdk_server() -> Iterator[str]:
    app, _ = images_app(latency=0.4, interval=0.1)
    with serve(app) as base_url:
        yield base_url


def test_meshapi_stream_sync(sdk_server: str) -> None:
    client = MeshAPI(base_url=sdk_server, token="rsk_test", max_retries=0)
    chunks = list(
        client.images.stream(
            ImageGenerationParams(
                model="local/sketch", prompt="a fox", size="128x128", output_format="jpeg"
            )
        )
    )
    assert chunks[0].status == "processing"
    assert chunks[0].data == []
    final = chunks[-1]
    assert final.status == "completed"
    image = decode_image(final.data[0].image_bytes())
    assert (image.format, image.size) == ("JPEG", (128, 128))


@pytest.mark.anyio
async def test_meshapi_stream_async_with_partials(sdk_server: str) -> None:
    async with AsyncMeshAPI(base_url=sdk_server, token="rsk_test", max_retries=0) as client:
        chunks = [
            chunk
            async for chunk in client.images.stream(
                ImageGenerationParams(
                    model="local/sketch", prompt="a fox", size="64x64", partial_images=2
                )
            )
        ]
    assert [chunk.status for chunk in chunks] == ["processing", "partial", "partial", "completed"]
    assert decode_image(chunks[1].data[0].image_bytes()).size == (64, 64)


@pytest.mark.anyio
async def test_meshapi_stream_raises_the_mid_stream_error() -> None:
    from meshapi import MeshAPIError

    app = ImagesApp(
        Settings(keepalive_interval=0.1, upstream_timeout=0.3),
        providers={"local": LocalProvider(latency=5)},
    )
    with serve(app) as base_url:
        async with AsyncMeshAPI(base_url=base_url, token="rsk_test", max_retries=0) as client:
            with pytest.raises(MeshAPIError) as raised:
                async for _ in client.images.stream(
                    ImageGenerationParams(model="local/sketch", prompt="a fox", size="64x64")
                ):
                    pass
    assert raised.value.error_code == "gateway_timeout"


async def _tasks(loop: asyncio.AbstractEventLoop) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(count(), loop))


@pytest.mark.anyio
@pytest.mark.parametrize("server", SERVERS, ids=["uvicorn", "hypercorn"])
async def test_client_disconnect_mid_stream_cancels_and_leaves_nothing(server: Server) -> None:
    app, provider = images_app(latency=0, interval=0.1)
    with server(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            # A finished request first, so that the server's idle task count is known.
            await client.post(GEN, json={**BODY, "stream": False})
        assert provider.loop is not None
        idle_tasks = await _tasks(provider.loop)
        provider.latency = 30
        async with (
            httpx.AsyncClient(base_url=base_url) as client,
            client.stream("POST", GEN, json=BODY) as response,
        ):
            async for chunk in response.aiter_raw():
                if b": ping" in chunk:
                    break
        assert await anyio.to_thread.run_sync(provider.cancellation.wait, 2)
        assert provider.cancelled == 1
        await asyncio.sleep(0.1)
        assert await _tasks(provider.loop) <= idle_tasks


@pytest.mark.anyio
async def test_fastapi_host_with_base_http_middleware_and_gzip() -> None:
    from fastapi import FastAPI, Request, Response
    from fastapi.middleware.gzip import GZipMiddleware

    host = FastAPI()

    @host.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "x" * 2000}

    @host.middleware("http")
    async def stamp(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["x-host-middleware"] = "yes"
        return response

    host.add_middleware(GZipMiddleware, minimum_size=100)
    provider = RecordingProvider(latency=1.0)
    host.add_middleware(
        ImagesMiddleware, settings=Settings(keepalive_interval=0.2), providers={"local": provider}
    )
    outer = ImagesMiddleware(host, Settings(keepalive_interval=0.2), providers={"local": provider})
    for app in (host, outer):
        with serve(app) as base_url:
            frames = await read_stream(base_url, {**BODY})
            async with httpx.AsyncClient(base_url=base_url) as client:
                pong = await client.get("/ping", headers={"accept-encoding": "gzip"})
        assert frames[0][0] < 0.5
        assert 3 <= sum(1 for _, frame in frames if frame == b": ping") <= 6
        assert frames[-1][1] == b"data: [DONE]"
        assert pong.headers["content-encoding"] == "gzip"
        assert pong.headers["x-host-middleware"] == "yes"
        assert pong.json()["pong"].startswith("xx")
