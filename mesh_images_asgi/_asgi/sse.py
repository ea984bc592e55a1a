"""The stream writer for ``"stream": true``: raw ASGI sends, idle pings, one writer.

Three tasks per stream, and only one of them ever calls ``send``::

    producer   -- runs the generation; posts partial images, then the result (or an error)
                  to the writer's mailbox, encoded as the client's dialect asks
                  (``_asgi/stream_events.py``: Mesh's ``image.chunk`` events or OpenAI's typed ones)
    writer     -- this coroutine, the only caller of ``send``: writes what the mailbox holds in
                  order, and ``: ping`` when ``keepalive_interval`` s pass without a write
    listener   -- the only caller of ``receive``: on ``http.disconnect`` it cancels everything

Every ``send`` is bounded by ``send_timeout``: a reader that stops reading ends the request (and
the upstream call) instead of pinning it. A frame larger than ``FRAME_PIECE`` (an image) goes out
in pieces of that size, each a ``send`` with its own timeout: a server buffers what a ``send``
hands it until the socket takes it, so a reader that stops strands at most one piece in the
server, not a whole image for as long as it holds the connection. The stream always ends with
``data: [DONE]`` and ``more_body: False`` (written under a shielded scope, also after an error, a
send timeout or a server-side cancellation) unless the client is gone, in which case nothing more
is written. A server-side cancellation (shutdown drain, a host's timeout) writes an error event
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
from collections.abc import Callable
from typing import Any

import anyio

from mesh_images_asgi._asgi.dialects import Dialect
from mesh_images_asgi._asgi.disconnect import DisconnectWatch, watching
from mesh_images_asgi._asgi.stream_events import DONE, PING, StreamEvents, stream_events
from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.asgi import Message, Receive, Send
from mesh_images_asgi._core.cancel import CancelScope
from mesh_images_asgi._core.errors import GatewayError, InternalError, ProviderNotAvailable
from mesh_images_asgi._domain.jobs import PartialImage
from mesh_images_asgi._observe.outcome import CLIENT_CLOSED, Outcome
from mesh_images_asgi._routing.router import Plan
from mesh_images_asgi._routing.service import ImageService

__all__ = ["DONE", "FRAME_PIECE", "PING", "stream_generation"]

logger = logging.getLogger("mesh_images_asgi")

CUT = ProviderNotAvailable(
    "The server stopped this generation before it finished (it is shutting down); retry it.",
    retry_after_seconds=1.0,
)

FRAME_PIECE = 64 * 1024
"""Most bytes one ``send`` hands the server (a frame larger than this goes in pieces)."""

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
        """Send ``data``, in pieces of at most ``FRAME_PIECE`` bytes, each within the timeout."""
        for start in range(0, len(data), FRAME_PIECE):
            piece = data[start : start + FRAME_PIECE] if len(data) > FRAME_PIECE else data
            last = start + FRAME_PIECE >= len(data)
            await self({"type": "http.response.body", "body": piece, "more_body": more or not last})
            self.sent += len(piece)
        self.closed = not more


async def stream_generation(
    service: ImageService,
    plan: Plan,
    receive: Receive,
    send: Send,
    outcome: Outcome,
    settings: Settings,
    dialect: Dialect = "mesh",
) -> None:
    """Answer ``plan`` as an SSE stream on raw ASGI ``send``, in ``dialect``'s events.

    The headers go out before the upstream answers, so they name the requested model only
    (``x-mesh-routing-model``); in Mesh's dialect the final chunk (or error event) carries the
    whole ``routing`` record, its ``model`` is the model that served, and its ``usage`` carries
    ``cost_usd`` when the cost is known (``_asgi/stream_events.py``).
    """
    events = stream_events(plan.job, dialect)
    stream = _Stream(service, plan, outcome, events, receive, send, settings)
    stream.outcome.stream_opened()
    loop = asyncio.get_running_loop()
    with watching():  # the producer's check_client(): one turn for the listener below
        producer = loop.create_task(stream.produce())
    listener: asyncio.Task[None] | None = None
    cut = False
    try:
        with CancelScope() as scope:

            def gone() -> None:  # the producer too, at once: not a turn later, via the writer
                scope.cancel()
                producer.cancel()

            listener = loop.create_task(stream.watch.run(gone))
            await stream.respond(settings.keepalive_interval)
    except asyncio.CancelledError:
        cut = True  # by the server (shutdown, a host's timeout): the client is told so
        raise
    finally:
        await _stop(producer, listener)
        await stream.finish(cut)


class _Stream:
    """One stream's parts: the producer's steps (``produce``) and the writer's (``respond``,
    ``finish``), around the mailbox between them."""

    __slots__ = ("events", "mailbox", "outcome", "plan", "request_id", "service", "watch", "writer")

    def __init__(
        self,
        service: ImageService,
        plan: Plan,
        outcome: Outcome,
        events: StreamEvents,
        receive: Receive,
        send: Send,
        settings: Settings,
    ) -> None:
        self.service = service
        self.plan = plan
        self.request_id = outcome.request_id
        self.events = events
        self.writer = _Writer(send, settings.send_timeout)
        self.outcome = outcome
        self.mailbox = _Mailbox()
        self.watch = DisconnectWatch(receive)

    async def produce(self) -> None:
        """Run the generation; post its partial images, then its result or its error."""
        outcome = self.outcome
        try:
            wants_partials = bool(self.plan.job.request.partial_images)
            on_partial = self._post_partial if wants_partials else None
            routed = await self.service.generate(self.plan, on_partial)
            cost = outcome.served(routed.routing.fallback)
            self.mailbox.put(self.events.completed(routed, cost), last=True)
        except GatewayError as error:
            outcome.failed(error)
            self.mailbox.put(self.events.failed(self._error_payload(error)), last=True)
        except Exception:
            outcome.fail(500, "internal_error")
            logger.exception("mesh-images: stream %s failed", self.request_id)
            failed = self._error_payload(InternalError("Internal error."))
            self.mailbox.put(self.events.failed(failed), last=True)

    async def _post_partial(self, partial: PartialImage) -> None:
        self.mailbox.put(self.events.partial(partial))

    def _error_payload(self, error: GatewayError) -> dict[str, Any]:
        payload = {"error": error.error_object(), "request_id": self.request_id}
        if error.routing is not None:
            payload["routing"] = error.routing
        return payload

    async def respond(self, keepalive_interval: float) -> None:
        """The headers, the opening event, then the mailbox's frames (pings while it is empty)
        and ``[DONE]``; a client that went away or stopped reading ends it early."""
        try:
            await self.writer(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                        (b"x-request-id", self.request_id.encode()),
                        (b"x-mesh-routing-model", self.plan.job.entry.id.encode()),
                    ],
                }
            )
            await self.writer.body(self.events.opening())
            await _pump(self.mailbox, self.writer, keepalive_interval, self.outcome.pinged)
        except OSError:
            self.watch.disconnected = True  # ASGI 2.4 servers raise on send to a gone client
        except SendTimeout:
            self.outcome.fail(CLIENT_CLOSED, "send_timeout")
            logger.warning(
                "mesh-images: stream %s ended: the client stopped reading", self.request_id
            )

    async def finish(self, cut: bool) -> None:
        """Record how the stream ended and, unless the client is gone or the response is
        complete, end it through the writer (shielded, briefly): the cut's error event when
        the server cancelled it, then ``[DONE]``."""
        outcome, writer = self.outcome, self.writer
        outcome.stream_closed()
        if cut:
            outcome.failed(CUT)
        elif self.watch.disconnected and not writer.closed:  # gone after [DONE]: no failure
            outcome.fail(CLIENT_CLOSED, "client_disconnected")
        if not self.watch.disconnected and not writer.closed:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(1.0),
                contextlib.suppress(OSError, SendTimeout),
            ):
                if cut:
                    await writer.body(self.events.failed(self._error_payload(CUT)))
                await writer.body(DONE, more=False)
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
