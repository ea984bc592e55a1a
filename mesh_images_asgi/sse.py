"""The stream writer for ``"stream": true``: raw ASGI sends, idle pings, one writer.

Four tasks per stream, and only one of them ever calls ``send``::

    producer   -- runs the generation; puts partial chunks, then the final chunk (or an error
                  event) on a small memory stream
    keepalive  -- sleeps until ``keepalive_interval`` s have passed since the last write, then
                  puts ``: ping`` on the same stream; it is also the watchdog that ends the stream
                  when one ``send`` has taken longer than ``send_timeout``
    writer     -- this coroutine: the only caller of ``send``; writes frames in order
    listener   -- the only caller of ``receive``: on ``http.disconnect`` it cancels everything

Timeouts are plain sleeps, not cancel scopes around every receive and send: a cancellation per
ping costs several times the ping itself, and thousands of streams ping at once.

A reader that stops reading ends the request (and the upstream call) after ``send_timeout``
instead of pinning it. The stream always ends with ``data: [DONE]`` and ``more_body: False``
(written under a shielded scope, also after an error, a send timeout or a server-side
cancellation) unless the client is gone, in which case nothing more is written.
Deliberate divergence from sse-starlette: pings are comments ``: ping`` with no timestamp, timed
from the last write (not from the last ping), as FastAPI's writer does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._asgi import Receive, Send
from .config import Settings
from .errors import GatewayError
from .providers.base import GeneratedImage, GenerationJob, PartialImage
from .responses import OPTIONAL_FIELDS, image_items
from .service import ImageService

__all__ = ["DONE", "PING", "event", "stream_generation"]

logger = logging.getLogger("mesh_images_asgi")

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class _Writer:
    """The one caller of ``send``; it records when it last wrote and whether a send is stuck."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.last_write = anyio.current_time()
        self.busy_since: float | None = None
        self.closed = False

    async def body(self, data: bytes, more: bool = True) -> None:
        self.busy_since = anyio.current_time()
        await self._send({"type": "http.response.body", "body": data, "more_body": more})
        self.busy_since = None
        self.last_write = anyio.current_time()
        self.closed = not more

    async def start(self, request_id: str) -> None:
        self.busy_since = anyio.current_time()
        await self._send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        self.busy_since = None


class _Keepalive:
    """Pings on idle, and the send-timeout watchdog."""

    def __init__(self, writer: _Writer, interval: float, send_timeout: float) -> None:
        self.writer = writer
        self.interval = interval
        self.send_timeout = send_timeout
        self.finishing = False
        self.stalled = False

    async def run(self, frames: MemoryObjectSendStream[bytes], scope: anyio.CancelScope) -> None:
        writer = self.writer
        while True:
            now = anyio.current_time()
            if writer.busy_since is not None:
                if now - writer.busy_since >= self.send_timeout:
                    self.stalled = True
                    scope.cancel()
                    return
                wake = writer.busy_since + self.send_timeout
            elif now - writer.last_write >= self.interval:
                if self.finishing:
                    return
                with contextlib.suppress(anyio.WouldBlock):
                    frames.send_nowait(PING)
                writer.last_write = now  # queued: the next one is due an interval from now
                wake = now + self.interval
            else:
                wake = writer.last_write + self.interval
            await anyio.sleep(wake - now)


async def stream_generation(
    service: ImageService,
    job: GenerationJob,
    receive: Receive,
    send: Send,
    request_id: str,
    settings: Settings,
) -> None:
    """Answer ``job`` as an SSE stream on raw ASGI ``send``."""
    base: dict[str, Any] = {
        "id": "img-" + os.urandom(12).hex(),
        "object": "image.chunk",
        "created": int(time.time()),
        "model": job.entry.id,
    }
    writer = _Writer(send)
    keepalive = _Keepalive(writer, settings.keepalive_interval, settings.send_timeout)
    disconnected = False
    frames_in, frames_out = anyio.create_memory_object_stream[bytes](max_buffer_size=4)

    async def produce(frames: MemoryObjectSendStream[bytes]) -> None:
        async def on_partial(partial: PartialImage) -> None:
            items = image_items(job, [GeneratedImage(b64_json=partial.b64_json)])
            chunk = {**base, "data": items, "status": "partial"}
            chunk["partial_image_index"] = partial.index
            await frames.send(event(chunk))

        async with frames:
            try:
                wants_partials = bool(job.request.partial_images)
                result = await service.generate(job, on_partial if wants_partials else None)
                items = image_items(job, result.images, result.output_format)
                final: dict[str, Any] = {**base, "data": items, "status": "completed"}
                for key in OPTIONAL_FIELDS:
                    value = getattr(result, key)
                    if value is not None:
                        final[key] = value
                last = event(final)
            except GatewayError as error:
                last = event({"error": error.error_object(), "request_id": request_id})
            except Exception:
                logger.exception("mesh-images: stream %s failed", request_id)
                error_object = {"code": "internal_error", "message": "Internal error."}
                last = event({"error": error_object, "request_id": request_id})
            keepalive.finishing = True
            await frames.send(last)

    async def listen() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        group.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(listen)
            group.start_soon(produce, frames_in)
            group.start_soon(keepalive.run, frames_in, group.cancel_scope)
            try:
                await writer.start(request_id)
                await writer.body(event({**base, "data": [], "status": "processing"}))
                await _pump(frames_out, writer)
            except OSError:
                disconnected = True  # servers implementing ASGI 2.4 raise on send to a gone client
            group.cancel_scope.cancel()
        if keepalive.stalled:
            logger.warning("mesh-images: stream %s ended: the client stopped reading", request_id)
    finally:
        frames_in.close()
        frames_out.close()
        if not disconnected and not writer.closed:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(1.0),
                contextlib.suppress(OSError),
            ):
                await send({"type": "http.response.body", "body": DONE, "more_body": False})


async def _pump(frames: MemoryObjectReceiveStream[bytes], writer: _Writer) -> None:
    """Write frames in order until the producer is done, then ``[DONE]``."""
    async with frames:
        async for frame in frames:
            await writer.body(frame)
    await writer.body(DONE, more=False)
