"""The stream writer for ``"stream": true``: raw ASGI sends, idle pings, one writer.

Three tasks per stream, and only one of them ever calls ``send``::

    producer  -- runs the generation; puts partial chunks, then the final chunk (or an error
                 event) on a small memory stream
    writer    -- this coroutine: takes frames off the stream and sends them; after
                 ``keepalive_interval`` seconds without a write it sends ``: ping``
    listener  -- the only caller of ``receive``: on ``http.disconnect`` it cancels everything

Every ``send`` is bounded by ``send_timeout``: a reader that stops reading ends the request (and
the upstream call) instead of pinning it. The stream always ends with ``data: [DONE]`` and
``more_body: False`` (written under a shielded scope, also after an error, a send timeout or a
server-side cancellation) unless the client is gone, in which case nothing more is written.
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

from ._asgi import Message, Receive, Send
from .config import Settings
from .errors import GatewayError
from .providers.base import GeneratedImage, GenerationJob, PartialImage
from .responses import OPTIONAL_FIELDS, image_items
from .service import ImageService

__all__ = ["DONE", "PING", "SendTimeout", "event", "stream_generation"]

logger = logging.getLogger("mesh_images_asgi")

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


class SendTimeout(Exception):
    """A ``send`` did not complete within ``send_timeout``: the client stopped reading."""


def event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class _Writer:
    """Sends frames with a timeout and remembers whether the response is finished."""

    def __init__(self, send: Send, timeout: float) -> None:
        self._send = send
        self._timeout = timeout
        self.closed = False

    async def __call__(self, message: Message) -> None:
        with anyio.move_on_after(self._timeout) as scope:
            await self._send(message)
        if scope.cancelled_caught:
            raise SendTimeout

    async def body(self, data: bytes, more: bool = True) -> None:
        await self({"type": "http.response.body", "body": data, "more_body": more})
        if not more:
            self.closed = True


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
    write = _Writer(send, settings.send_timeout)
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
                final: dict[str, Any] = {**base, "data": items}
                final["status"] = "completed"
                for key in OPTIONAL_FIELDS:
                    value = getattr(result, key)
                    if value is not None:
                        final[key] = value
                await frames.send(event(final))
            except GatewayError as error:
                await frames.send(event({"error": error.error_object(), "request_id": request_id}))
            except Exception:
                logger.exception("mesh-images: stream %s failed", request_id)
                error_object = {"code": "internal_error", "message": "Internal error."}
                await frames.send(event({"error": error_object, "request_id": request_id}))

    async def listen() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        group.cancel_scope.cancel()

    try:
        await write(
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
        await write.body(event({**base, "data": [], "status": "processing"}))
        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(listen)
            group.start_soon(produce, frames_in)
            try:
                await _pump(frames_out, write, settings.keepalive_interval)
            except (OSError, SendTimeout) as exc:
                failure = exc
            group.cancel_scope.cancel()
        if isinstance(failure, OSError):
            disconnected = True  # servers implementing ASGI 2.4 raise on send to a gone client
        elif failure is not None:
            logger.warning("mesh-images: stream %s ended: the client stopped reading", request_id)
    except OSError:
        disconnected = True
    except SendTimeout:
        logger.warning("mesh-images: stream %s ended: the client stopped reading", request_id)
    finally:
        frames_in.close()
        frames_out.close()
        if not disconnected and not write.closed:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(1.0),
                contextlib.suppress(OSError),
            ):
                await send({"type": "http.response.body", "body": DONE, "more_body": False})


async def _pump(frames: MemoryObjectReceiveStream[bytes], write: _Writer, interval: float) -> None:
    """Write frames as they come, a ping after ``interval`` s of silence, then ``[DONE]``."""
    async with frames:
        while True:
            frame = PING
            with anyio.move_on_after(interval):
                try:
                    frame = await frames.receive()
                except anyio.EndOfStream:
                    break
            await write.body(frame)
    await write.body(DONE, more=False)
