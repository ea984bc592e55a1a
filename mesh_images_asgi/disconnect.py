"""Run a coroutine until it finishes or the client disconnects, whichever comes first.

After the request body is read, the only message a server sends on ``receive`` is
``http.disconnect``, so one listener task waits for it and cancels the work: a client that
gives up on a two-minute generation does not leave the upstream request running.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ._asgi import Receive

__all__ = ["DisconnectWatch", "call_until_disconnect"]

T = TypeVar("T")


class DisconnectWatch:
    """The one caller of ``receive`` once the body is read: it cancels ``scope`` on disconnect."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.disconnected = False

    async def run(self, scope: anyio.CancelScope) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        scope.cancel()


async def call_until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | None:
    """``await work()``; None if the client disconnected first (the work is then cancelled)."""
    watch = DisconnectWatch(receive)
    error: Exception | None = None
    result: T | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(watch.run, group.cancel_scope)
        try:
            result = await work()
        except Exception as exc:
            error = exc
        group.cancel_scope.cancel()
    if error is not None:
        raise error
    return None if watch.disconnected else result
