"""Run a coroutine until it finishes or the client disconnects, whichever comes first.

After the request body is read, the only message a server sends on ``receive`` is
``http.disconnect``, so one listener task waits for it and cancels the work: a client that
gives up on a two-minute generation does not leave the upstream request running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from ._asgi import Receive
from ._cancel import CancelScope

__all__ = ["LISTEN_AFTER", "DisconnectWatch", "call_until_disconnect", "check_client", "watching"]

T = TypeVar("T")

logger = logging.getLogger("mesh_images_asgi")

LISTEN_AFTER = 0.05
"""Seconds into the work before the disconnect listener starts (see ``call_until_disconnect``)."""

_check: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "mesh_images_client_check", default=None
)


async def check_client() -> None:
    """Let the request's disconnect listener see a disconnect that already happened: it then
    cancels this task (at the ``await``). Call it before work the client may no longer want, such
    as an upstream call after a wait in a bulkhead's queue: the slot and the disconnect can come
    in the same turn of the loop, and the call would go out first. No-op outside a request."""
    check = _check.get()
    if check is not None:
        await check()


def _one_turn() -> Awaitable[None]:
    """A running listener needs one turn of the loop to read a disconnect and cancel."""
    return asyncio.sleep(0)


@contextmanager
def watching(check: Callable[[], Awaitable[None]] = _one_turn) -> Iterator[None]:
    """``check_client`` in the block (and in tasks made in it) runs ``check``."""
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)


class DisconnectWatch:
    """The one caller of ``receive`` once the body is read: ``cancel()`` on disconnect."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.disconnected = False

    async def run(self, cancel: Callable[[], object]) -> None:
        try:
            while (await self._receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server whose receive fails has lost the connection too
            logger.debug("mesh-images: receive failed; treating it as a disconnect", exc_info=True)
        self.disconnected = True
        cancel()


async def call_until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | None:
    """``await work()``; None if the client disconnected first (the work is then cancelled).

    The listener is a bare asyncio task, started ``LISTEN_AFTER`` s into the work and cancelled
    (not awaited) once the work is done. Most answers come sooner, and they pay for a timer
    instead of a task and two more trips through the event loop; a disconnect is still seen
    within ``LISTEN_AFTER`` s of when it happened (the listener's first ``receive`` returns it).
    """
    watch = DisconnectWatch(receive)
    listener: asyncio.Task[None] | None = None
    with CancelScope() as scope:
        loop = scope.loop

        def listen() -> None:
            nonlocal listener
            listener = loop.create_task(watch.run(scope.cancel))

        timer = loop.call_later(LISTEN_AFTER, listen)

        async def check() -> None:
            if listener is None:  # the client may be gone already: listen now
                timer.cancel()
                listen()
            await _one_turn()

        try:
            with watching(check):
                result = await work()
        finally:
            timer.cancel()
            if listener is not None:
                listener.cancel()
        if not watch.disconnected:
            return result
    return None
