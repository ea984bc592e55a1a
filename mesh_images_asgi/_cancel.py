"""A cancel scope for the request path, built on asyncio's own ``asyncio.Timeout``.

``CancelScope`` behaves like the subset of anyio's scope the request path needs: a block that ends
quietly when its deadline passes or when someone calls ``cancel()``, telling so in
``cancelled_caught``; anything else (an error, a cancellation from outside) goes through.

Why not anyio's: the gateway runs on asyncio only (its upstream client is aiohttp), and a JSON
request passes through five scopes (drain, body deadline, disconnect, routing deadline, attempt
deadline). anyio's scope costs about 10 µs to enter and leave on asyncio (it finds the current task
through sniffio, and walks its scope tree to deliver a cancellation); ``asyncio.Timeout`` costs
about 1 µs, and the interpreter keeps its cancellation count (``Task.uncancel``) right, also next
to anyio scopes and task groups. ``bench/overhead.py`` measures the difference (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

__all__ = ["CancelScope"]


class CancelScope:
    """``async with CancelScope(deadline)``: leave the block at ``deadline`` (loop time) or when
    ``cancel()`` is called, whichever comes first; ``cancelled_caught`` then says so.

    ``deadline=None`` never expires on its own. The scope belongs to the task that entered it;
    ``cancel()`` may be called from any callback or task on the same loop.
    """

    __slots__ = ("_cancel_called", "_entered", "_left", "_timeout", "cancelled_caught")

    def __init__(self, deadline: float | None = None) -> None:
        self._timeout = asyncio.Timeout(deadline)
        self.cancelled_caught = False
        self._entered = False
        self._left = False
        self._cancel_called = False

    def cancel(self) -> None:
        """End the block at the next scheduling point (at once when it is entered later)."""
        self._cancel_called = True
        if self._entered and not self._left:
            self._timeout.reschedule(-math.inf)

    @property
    def cancel_called(self) -> bool:
        return self._cancel_called

    async def __aenter__(self) -> CancelScope:
        await self._timeout.__aenter__()
        self._entered = True
        if self._cancel_called:
            self._timeout.reschedule(-math.inf)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        self._left = True
        try:
            await self._timeout.__aexit__(exc_type, exc, traceback)
        except TimeoutError:  # raised only for our own expiry, in place of its CancelledError
            self.cancelled_caught = True
            return True
        return None
