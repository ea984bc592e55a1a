"""Run a coroutine until it finishes or the client disconnects, whichever comes first.

After the request body is read, the only message a server sends on ``receive`` is
``http.disconnect``, so one listener task waits for it and cancels the work: a client that
gives up on a two-minute generation does not leave the upstream request running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mesh_images_asgi._core.asgi import Receive
from mesh_images_asgi._core.cancel import CancelScope
from mesh_images_asgi._core.presence import check_client, one_turn, watching

__all__ = ["LISTEN_AFTER", "DisconnectWatch", "call_until_disconnect", "check_client", "watching"]

T = TypeVar("T")

logger = logging.getLogger("mesh_images_asgi")

LISTEN_AFTER = 0.05
"""Seconds into the work before the disconnect listener starts (see ``call_until_disconnect``)."""


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
            await one_turn()

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
