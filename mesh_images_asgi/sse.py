"""The stream writer for ``"stream": true``: raw ASGI sends, idle pings, one writer.

Three tasks per stream, and only one of them ever calls ``send``::

    producer   -- runs the generation; posts partial chunks, then the final chunk (or an error
                  event) to the writer's mailbox
    writer     -- this coroutine, the only caller of ``send``: writes what the mailbox holds in
                  order, and ``: ping`` when ``keepalive_interval`` s pass without a write
    listener   -- the only caller of ``receive``: on ``http.disconnect`` it cancels everything

Every ``send`` is bounded by ``send_timeout``: a reader that stops reading ends the request (and
the upstream call) instead of pinning it. The stream always ends with ``data: [DONE]`` and
``more_body: False`` (written under a shielded scope, also after an error, a send timeout or a
server-side cancellation) unless the client is gone, in which case nothing more is written. A
server-side cancellation (shutdown drain, a host's timeout) writes an error event
(``provider_not_available``) just before that ``[DONE]``, so that a cut stream never looks done.

Memory matters here (thousands of streams wait at once): the producer and the listener are bare
asyncio tasks (an anyio task group with its scope and task handles cost about 3 KiB more per
stream; bench/streams.py), the mailbox is a list and a future instead of a memory object stream,
and a ping is a timer resolving that future, not a separate keep-alive task.
Deliberate divergence from sse-starlette: pings are comments ``: ping`` with no timestamp, timed
from the last write (not from the last ping), as FastAPI's writer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from ._asgi import Message, Receive, Send
from ._cancel import CancelScope
from .config import Settings
from .cost import with_cost
from .disconnect import DisconnectWatch
from .errors import GatewayError, ProviderNotAvailable
from .outcome import CLIENT_CLOSED, current_outcome
from .providers.base import GeneratedImage, PartialImage
from .responses import OPTIONAL_FIELDS, image_items
from .routing import Plan
from .service import ImageService

__all__ = ["DONE", "PING", "event", "stream_generation"]

logger = logging.getLogger("mesh_images_asgi")

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
CUT = ProviderNotAvailable(
    "The server stopped this generation before it finished (it is shutting down); retry it.",
    retry_after_seconds=1.0,
)


def event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


STOP_GRACE = 5.0
"""Seconds a cancelled generation gets to finish when its stream ends."""


class SendTimeout(Exception):
    """One ``send`` took longer than ``send_timeout``: the client stopped reading."""


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Mailbox:
    """Frames from the producer to the writer, in order; the last one is marked."""

    __slots__ = ("_frames", "_wakeup", "finished")

    def __init__(self) -> None:
        self._frames: list[bytes] = []  # a few frames at most; a deque's block costs 0.6 KiB
        self._wakeup: asyncio.Future[None] | None = None
        self.finished = False

    def put(self, frame: bytes, last: bool = False) -> None:
        self._frames.append(frame)
        self.finished = last
        if self._wakeup is not None:
            _wake(self._wakeup)

    async def get(self, patience: float) -> bytes | None:
        """The next frame, or None after ``patience`` s without one."""
        if not self._frames:
            loop = asyncio.get_running_loop()
            self._wakeup = waiter = loop.create_future()
            timer = loop.call_later(patience, _wake, waiter)  # no frame in time: a ping
            try:
                await waiter
            finally:
                timer.cancel()
                self._wakeup = None
        return self._frames.pop(0) if self._frames else None

    @property
    def drained(self) -> bool:
        return self.finished and not self._frames


class _Writer:
    """Sends with a timeout, and remembers whether the response is finished."""

    __slots__ = ("_send", "_timeout", "closed", "sent")

    def __init__(self, send: Send, timeout: float) -> None:
        self._send = send
        self._timeout = timeout
        self.closed = False
        self.sent = 0

    async def __call__(self, message: Message) -> None:
        with CancelScope(timeout=self._timeout) as scope:
            await self._send(message)
        if scope.cancelled_caught:
            raise SendTimeout

    async def body(self, data: bytes, more: bool = True) -> None:
        await self({"type": "http.response.body", "body": data, "more_body": more})
        self.closed = not more
        self.sent += len(data)


async def stream_generation(
    service: ImageService,
    plan: Plan,
    receive: Receive,
    send: Send,
    request_id: str,
    settings: Settings,
) -> None:
    """Answer ``plan`` as an SSE stream on raw ASGI ``send``.

    The headers go out before the upstream answers, so they name the requested model only
    (``x-mesh-routing-model``); the final chunk (or error event) carries the whole ``routing``
    record, and its ``model`` is the model that served; its ``usage`` carries ``cost_usd`` when
    the cost is known.
    """
    job = plan.job
    base: dict[str, Any] = {
        "id": "img-" + os.urandom(12).hex(),
        "object": "image.chunk",
        "created": int(time.time()),
        "model": job.entry.id,
    }
    writer = _Writer(send, settings.send_timeout)
    outcome = current_outcome()
    mailbox = _Mailbox()
    watch = DisconnectWatch(receive)
    cut = False

    async def produce() -> None:
        async def on_partial(partial: PartialImage) -> None:
            items = image_items(job, [GeneratedImage(b64_json=partial.b64_json)])
            chunk = {**base, "data": items, "status": "partial"}
            chunk["partial_image_index"] = partial.index
            mailbox.put(event(chunk))

        try:
            wants_partials = bool(job.request.partial_images)
            routed = await service.generate(plan, on_partial if wants_partials else None)
            cost = outcome.served(routed.routing.fallback)
            result = routed.result
            items = image_items(routed.job, result.images, result.output_format)
            final: dict[str, Any] = {**base, "data": items, "status": "completed"}
            final["model"] = routed.routing.model
            final["routing"] = routed.routing.public()
            for key in OPTIONAL_FIELDS:
                value = getattr(result, key)
                if value is not None:
                    final[key] = value
            usage = with_cost(result.usage, cost)
            if usage is not None:
                final["usage"] = usage
            mailbox.put(event(final), last=True)
        except GatewayError as error:
            outcome.failed(error)
            failed = {"error": error.error_object(), "request_id": request_id}
            if error.routing is not None:
                failed["routing"] = error.routing
            mailbox.put(event(failed), last=True)
        except Exception:
            outcome.fail(500, "internal_error")
            logger.exception("mesh-images: stream %s failed", request_id)
            error_object = {"code": "internal_error", "message": "Internal error."}
            mailbox.put(event({"error": error_object, "request_id": request_id}), last=True)

    outcome.stream_opened()
    loop = asyncio.get_running_loop()
    producer = loop.create_task(produce())
    listener: asyncio.Task[None] | None = None
    try:
        with CancelScope() as scope:
            listener = loop.create_task(watch.run(scope.cancel))
            try:
                await writer(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream"),
                            (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no"),
                            (b"x-request-id", request_id.encode()),
                            (b"x-mesh-routing-model", job.entry.id.encode()),
                        ],
                    }
                )
                await writer.body(event({**base, "data": [], "status": "processing"}))
                await _pump(mailbox, writer, settings.keepalive_interval, outcome.pinged)
            except OSError:
                watch.disconnected = True  # ASGI 2.4 servers raise on send to a gone client
            except SendTimeout:
                outcome.fail(CLIENT_CLOSED, "send_timeout")
                logger.warning(
                    "mesh-images: stream %s ended: the client stopped reading", request_id
                )
    except asyncio.CancelledError:
        cut = True  # by the server (shutdown, a host's timeout): the client is told so
        raise
    finally:
        await _stop(producer, listener)
        outcome.stream_closed()
        if cut:
            outcome.failed(CUT)
        elif watch.disconnected and not writer.closed:  # a disconnect after [DONE] is no failure
            outcome.fail(CLIENT_CLOSED, "client_disconnected")
        if not watch.disconnected and not writer.closed:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(1.0),
                contextlib.suppress(OSError),
            ):
                if cut:
                    failed = event({"error": CUT.error_object(), "request_id": request_id})
                    await send({"type": "http.response.body", "body": failed, "more_body": True})
                    writer.sent += len(failed)
                await send({"type": "http.response.body", "body": DONE, "more_body": False})
                writer.sent += len(DONE)
        outcome.bytes = writer.sent


async def _stop(producer: asyncio.Task[None], listener: asyncio.Task[None] | None) -> None:
    """Cancel the producer (and so the upstream call) and the listener, and wait until they
    are done: nothing of the stream outlives it."""
    tasks = [producer] if listener is None else [producer, listener]
    for task in tasks:
        task.cancel()
    with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_GRACE):
        await asyncio.wait(tasks)
    if not producer.done():
        logger.error("mesh-images: a stream's generation ignored its cancellation")


async def _pump(
    mailbox: _Mailbox, writer: _Writer, interval: float, pinged: Callable[[], None]
) -> None:
    """Write frames as they come, a ping after ``interval`` s of silence, then ``[DONE]``."""
    while not mailbox.drained:
        frame = await mailbox.get(interval)
        if frame is None:
            pinged()
            frame = PING
        await writer.body(frame)
    await writer.body(DONE, more=False)
