"""Close resources when the event loop that created them shuts down, without any lifespan.

asyncio has no "this loop is closing" callback, but every orderly shutdown of a loop
(``asyncio.run`` and ``asyncio.Runner``, which uvicorn and hypercorn use, ``anyio.run``, and
anything else calling ``loop.shutdown_asyncgens()``) finalises the async generators still
suspended on that loop *before* closing it, while it can still run coroutines. A generator
suspended at a ``yield`` whose ``finally`` awaits ``close()`` is therefore a shutdown hook: this is
how ``ImagesApp`` closes an upstream client it created lazily, when the host never runs lifespan
(Django under a server, ``uvicorn --lifespan off``), before its open connections are left to
the garbage collector's "unclosed transport" warnings.

The loop only holds a weak reference to the generator: ``LoopGuard`` keeps it alive. A guard that
is garbage-collected while its loop runs calls ``close()`` then (asyncio's finaliser hook); one
collected after its loop closed does nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable

__all__ = ["LoopGuard"]

Close = Callable[[], Awaitable[None]]


class LoopGuard:
    """Await ``close()`` when the running event loop shuts down, unless disarmed first."""

    def __init__(self, close: Close) -> None:
        self._close: Close | None = close
        self._generator = self._wait()
        self._run_to_yield()

    @classmethod
    def for_running_loop(cls, close: Close) -> LoopGuard | None:
        """A guard on the running loop; None when no asyncio loop runs in this thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        return cls(close)

    def disarm(self) -> None:
        """Forget ``close``: the caller closed the resources itself."""
        if self._close is None:  # already disarmed, or firing right now
            return
        self._close = None
        self._run_to_end()

    async def _wait(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            close, self._close = self._close, None
            if close is not None:
                await close()

    def _run_to_yield(self) -> None:
        # Starting the generator registers it with the running loop (its first-iteration hook);
        # it reaches the ``yield`` without awaiting anything, so one ``send`` gets it there.
        try:
            self._generator.asend(None).send(None)
        except StopIteration:
            return
        raise RuntimeError("LoopGuard generator did not suspend at its yield")  # pragma: no cover

    def _run_to_end(self) -> None:
        # Disarmed, the ``finally`` awaits nothing, so closing the generator completes at once.
        try:
            self._generator.aclose().send(None)
        except StopIteration:
            return
        raise RuntimeError("LoopGuard generator did not finish")  # pragma: no cover
