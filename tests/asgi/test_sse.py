"""The stream writer, driven through raw ASGI with fake ``receive``/``send``: timing, ordering,
the final frame after cancellation, send timeouts and disconnects.

Every test runs on fake loop time (``looptime``): sleeps, timers and timeouts advance a clock of
the event loop's own instead of the wall clock, so the times asserted here are exact and the
tests do not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import looptime
import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._asgi.sse import DONE, PING
from mesh_images_asgi._core.asgi import Message
from mesh_images_asgi._core.errors import UpstreamError
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialImage,
    PartialSink,
    ProviderResult,
)
from mesh_images_asgi.providers.local import LocalProvider

GEN = "/v1/images/generations"


def now() -> float:
    return asyncio.get_running_loop().time()


@pytest.fixture(autouse=True)
async def fake_loop_time() -> AsyncIterator[None]:
    """Run the test on the event loop's fake clock."""
    loop = asyncio.get_running_loop()
    looptime.patch_event_loop(loop, _enabled=False)  # type: ignore[arg-type]
    with looptime.enabled(strict=True):
        yield


class ScriptedProvider:
    """Waits ``latency`` s (sending partials on the way), then returns or raises ``error``."""

    name = "local"

    def __init__(
        self, latency: float, error: Exception | None = None, partial_every: float | None = None
    ) -> None:
        self.latency = latency
        self.error = error
        self.partial_every = partial_every
        self.cancelled_at: float | None = None

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        try:
            if on_partial is not None and self.partial_every is not None:
                for index in range(job.request.partial_images or 0):
                    await anyio.sleep(self.partial_every)
                    await on_partial(PartialImage(b64_json="cGFydGlhbA==", index=index))
            await anyio.sleep(self.latency)
        except anyio.get_cancelled_exc_class():
            self.cancelled_at = now()
            raise
        if self.error is not None:
            raise self.error
        return ProviderResult(
            images=[GeneratedImage(b64_json="aW1hZ2U=")],
            created=1,
            output_format="png",
            size="64x64",
        )

    async def aclose(self) -> None:
        return None


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": GEN,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
    }


class Run:
    """One request through the app, recording every sent message with its time."""

    def __init__(self, provider: Any, body: dict[str, Any], **settings: Any) -> None:
        settings.setdefault("keepalive_interval", 0.1)
        self.app = ImagesApp(Settings(**settings), providers={"local": provider})
        self.body = json.dumps({"model": "local/sketch", "prompt": "x", "stream": True, **body})
        self.sent: list[tuple[float, Message]] = []
        self.disconnect = anyio.Event()
        self.started = 0.0
        self.send_hook: Callable[[Message], Awaitable[None]] | None = None
        self.headers: list[tuple[bytes, bytes]] = []

    async def receive(self) -> Message:
        if self.body:
            body, self.body = self.body, ""
            return {"type": "http.request", "body": body.encode(), "more_body": False}
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.send_hook is not None:
            await self.send_hook(message)
        self.sent.append((now() - self.started, message))

    async def __call__(self) -> None:
        self.started = now()
        try:
            await self.app(_scope(self.headers), self.receive, self.send)
        finally:
            await self.app.aclose()

    @property
    def frames(self) -> list[bytes]:
        return [m["body"] for _, m in self.sent if m["type"] == "http.response.body"]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(f[6:]) for f in self.frames if f.startswith(b"data: {")]


@pytest.mark.anyio
async def test_headers_processing_pings_final_done_in_order() -> None:
    run = Run(ScriptedProvider(latency=0.55), {})
    await run()
    start = run.sent[0][1]
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream"
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-accel-buffering"] == b"no"
    assert headers[b"x-request-id"].startswith(b"req_")
    assert b"content-length" not in headers
    frames = run.frames
    first = json.loads(frames[0][6:])
    assert (first["status"], first["data"], first["object"]) == ("processing", [], "image.chunk")
    assert first["model"] == "local/sketch"
    assert first["id"].startswith("img-")
    assert run.sent[1][0] == 0  # the processing chunk goes out at once
    assert set(frames[1:-2]) == {PING}
    assert len(frames[1:-2]) == 5  # at 0.1, 0.2, 0.3, 0.4 and 0.5 s of the 0.55 s
    final = json.loads(frames[-2][6:])
    assert final["status"] == "completed"
    assert final["id"] == first["id"]
    assert final["data"] == [{"url": "data:image/png;base64,aW1hZ2U="}]
    assert frames[-1] == DONE
    assert run.sent[-1][1]["more_body"] is False
    assert all(m.get("more_body") for _, m in run.sent[1:-1])


@pytest.mark.anyio
async def test_pings_are_timed_from_the_last_write() -> None:
    # Partials every 0.07 s keep the stream busy: no ping while they flow (interval 0.1 s).
    run = Run(ScriptedProvider(latency=0.25, partial_every=0.07), {"partial_images": 3})
    await run()
    frames = run.frames
    kinds = [
        ("ping" if f == PING else json.loads(f[6:]).get("status", "done") if f != DONE else "done")
        for f in frames
    ]
    assert kinds[:4] == ["processing", "partial", "partial", "partial"]
    assert kinds[-2:] == ["completed", "done"]
    assert kinds.count("ping") == 2  # only in the 0.25 s after the last partial (at 0.21 s)
    times = [t for t, m in run.sent if m.get("body") == PING]
    assert times == pytest.approx([0.31, 0.41])  # 0.1 s after the last write, then every 0.1 s
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.1])


@pytest.mark.anyio
async def test_partials_carry_their_index_and_are_sent_only_when_asked() -> None:
    asked = Run(ScriptedProvider(latency=0.0, partial_every=0.01), {"partial_images": 2})
    await asked()
    partials = [e for e in asked.events() if e.get("status") == "partial"]
    assert [p["partial_image_index"] for p in partials] == [0, 1]
    assert partials[0]["data"] == [{"url": "data:image/png;base64,cGFydGlhbA=="}]
    not_asked = Run(ScriptedProvider(latency=0.0, partial_every=0.01), {})
    await not_asked()
    assert [e["status"] for e in not_asked.events()] == ["processing", "completed"]


@pytest.mark.anyio
async def test_error_after_the_first_byte_is_an_error_event_then_done() -> None:
    error = UpstreamError("upstream broke", provider_code="internal_provider_error")
    run = Run(ScriptedProvider(latency=0.05, error=error), {}, max_attempts=1)
    await run()
    assert run.sent[0][1]["status"] == 200
    last_event = run.events()[-1]
    assert last_event["error"]["code"] == "upstream_error"
    assert last_event["error"]["provider_code"] == "internal_provider_error"
    assert last_event["request_id"].startswith("req_")
    assert run.frames[-1] == DONE
    assert run.sent[-1][1]["more_body"] is False


@pytest.mark.anyio
async def test_disconnect_cancels_the_upstream_within_100ms_and_writes_nothing_more() -> None:
    provider = ScriptedProvider(latency=30)
    run = Run(provider, {})
    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await anyio.sleep(0.25)
        sent_before = len(run.sent)
        disconnected_at = now()
        run.disconnect.set()
    assert provider.cancelled_at is not None
    assert provider.cancelled_at - disconnected_at < 0.1
    assert len(run.sent) == sent_before


@pytest.mark.anyio
async def test_oserror_from_send_counts_as_a_disconnect() -> None:
    provider = ScriptedProvider(latency=30)
    run = Run(provider, {})
    pings = 0

    async def failing_send(message: Message) -> None:
        nonlocal pings
        if message.get("body") == PING:
            pings += 1
            if pings == 2:
                raise OSError("client gone")

    run.send_hook = failing_send
    with anyio.fail_after(5):
        await run()
    assert provider.cancelled_at is not None
    assert run.frames.count(PING) == 1  # the failed send was not recorded, nothing came after


@pytest.mark.anyio
async def test_stalled_reader_ends_the_request_by_send_timeout() -> None:
    provider = ScriptedProvider(latency=30)
    run = Run(provider, {}, send_timeout=0.2)
    stall = anyio.Event()

    async def stalling_send(message: Message) -> None:
        if message.get("body") == PING:
            await stall.wait()  # the client stopped reading: this write never completes

    run.send_hook = stalling_send
    with anyio.fail_after(5):
        await run()
    # The first ping is due at 0.1 s and its write may take 0.2 s: the request ends then.
    assert now() - run.started == pytest.approx(0.3)
    assert provider.cancelled_at is not None
    assert provider.cancelled_at - run.started == pytest.approx(0.3)


@pytest.mark.anyio
async def test_final_frame_is_sent_even_when_the_server_cancels_the_request() -> None:
    provider = ScriptedProvider(latency=30)
    run = Run(provider, {})
    with anyio.move_on_after(0.3):
        await run()
    assert provider.cancelled_at is not None
    assert run.events()[-1]["error"]["code"] == "provider_not_available"  # a cut stream says so
    assert run.frames[-1] == DONE
    assert run.sent[-1][1]["more_body"] is False


@pytest.mark.anyio
async def test_local_provider_partials_end_to_end() -> None:
    run = Run(LocalProvider(latency=0.3), {"partial_images": 2, "size": "64x64", "n": 2})
    await run()
    statuses = [e["status"] for e in run.events()]
    assert statuses == ["processing", "partial", "partial", "completed"]
    assert len(run.events()[-1]["data"]) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("ending", ["completed", "disconnect", "server_cancel"])
async def test_no_task_outlives_the_stream(ending: str) -> None:
    before = asyncio.all_tasks()
    provider = ScriptedProvider(latency=0.2 if ending == "completed" else 30)
    run = Run(provider, {})
    if ending == "completed":
        await run()
    elif ending == "disconnect":
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await anyio.sleep(0.15)
            run.disconnect.set()
    else:
        with anyio.move_on_after(0.15):
            await run()
    assert asyncio.all_tasks() == before  # the producer and the listener were awaited
    if ending != "completed":
        assert provider.cancelled_at is not None


def _named_events(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of each ``event:`` frame (OpenAI's dialect)."""
    named = []
    for frame in frames:
        for event in frame.split(b"\n\n"):
            if event.startswith(b"event: "):
                name, data = event.split(b"\n", 1)
                named.append((name[7:].decode(), json.loads(data.removeprefix(b"data: "))))
    return named


@pytest.mark.anyio
async def test_openai_dialect_encodes_partials_and_one_completed_event_per_image() -> None:
    run = Run(LocalProvider(latency=0.1), {"partial_images": 2, "size": "64x64", "n": 2})
    run.headers = [(b"x-stainless-lang", b"python")]
    await run()
    assert run.frames[0] == PING  # OpenAI has no processing event
    events = _named_events(run.frames)
    assert [name for name, _ in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
        "image_generation.completed",
    ]
    assert all(name == data["type"] for name, data in events)
    assert [data["partial_image_index"] for _, data in events[:2]] == [0, 1]
    completed = events[-1][1]
    assert (completed["size"], completed["output_format"]) == ("64x64", "png")
    assert completed["quality"] in {"low", "medium", "high", "auto"}
    assert completed["usage"]["total_tokens"] == 0  # the local renderer reports no usage
    assert run.frames[-1] == DONE


@pytest.mark.anyio
async def test_openai_dialect_cut_stream_ends_with_an_error_event_then_done() -> None:
    provider = ScriptedProvider(latency=30)
    run = Run(provider, {})
    run.headers = [(b"x-mesh-dialect", b"openai")]
    with anyio.move_on_after(0.3):
        await run()
    name, data = _named_events(run.frames)[-1]
    assert name == "error"
    assert data["type"] == "error"
    assert (data["error"]["code"], data["error"]["type"]) == (
        "provider_not_available",
        "server_error",
    )
    assert run.frames[-1] == DONE
    assert run.sent[-1][1]["more_body"] is False


@pytest.mark.anyio
async def test_mesh_final_chunk_is_the_json_answer_plus_the_chunk_fields() -> None:
    run = Run(ScriptedProvider(latency=0.0), {"response_format": "b64_json"})
    await run()
    final = run.events()[-1]
    assert final["data"] == [{"b64_json": "aW1hZ2U="}]
    assert (final["size"], final["output_format"], final["status"]) == ("64x64", "png", "completed")
    assert final["object"] == "image.chunk"
    assert final["created"] == run.events()[0]["created"]  # the stream's, not the upstream's
