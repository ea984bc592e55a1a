"""A cancel scope for the request path, on asyncio's own task cancellation.

``CancelScope`` behaves like the subset of anyio's scope the request path needs: a block that ends
quietly when its deadline passes or when someone calls ``cancel()``, telling so in
``cancelled_caught``; anything else (an error, a cancellation from outside) goes through. It does
what ``asyncio.Timeout`` does (``Task.cancel`` to interrupt, ``Task.uncancel`` to tell its own
cancellation from one that came from outside), as a plain ``with`` block with a ``cancel()``.

Why not anyio's: the gateway runs on asyncio only (its upstream client is asyncio's), and a JSON
request passes through four scopes (drain, body deadline, disconnect, routing deadline). anyio's
scope costs about 10 µs to enter and leave on asyncio (it finds the current task through sniffio,
and walks its scope tree to deliver a cancellation), ``asyncio.timeout`` about 2 µs (an async
context manager), this one under 1 µs plus the deadline's timer; and it is about 100 bytes, which
counts when thousands of streams each hold a few. ``bench/overhead.py`` and ``bench/streams.py``
measure the gateway (docs/benchmarks.md).

Finding the running loop costs a ``getpid`` system call in CPython 3.11 (about 0.2 µs here), so
the request path finds it once per scope: ``timeout=`` is resolved against the loop the scope
finds on entry, and ``scope.loop`` and ``scope.deadline`` are there to read afterwards.
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError
from types import TracebackType
from typing import Any

__all__ = ["CancelScope"]


_CREATED, _ENTERED, _FIRED, _LEFT = range(4)


class CancelScope:
    """``with CancelScope(deadline) as scope``: leave the block at ``deadline`` (loop time) or
    when ``cancel()`` is called, whichever comes first; ``cancelled_caught`` then says so.

    ``CancelScope(timeout=seconds)`` sets the deadline that many seconds after entry. With
    neither, the scope never expires on its own. The scope belongs to the task that entered it;
    ``cancel()`` may be called from any callback or task on the same loop.
    """

    __slots__ = (
        "_cancel_called",
        "_cancelling",
        "_deadline",
        "_handle",
        "_state",
        "_task",
        "_timeout",
        "cancelled_caught",
    )

    def __init__(self, deadline: float | None = None, *, timeout: float | None = None) -> None:
        if deadline is not None and timeout is not None:
            raise ValueError("give a CancelScope a deadline or a timeout, not both")
        self._deadline = deadline
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._state = _CREATED
        self._cancel_called = False
        self.cancelled_caught = False

    @property
    def cancel_called(self) -> bool:
        return self._cancel_called

    @property
    def deadline(self) -> float | None:
        """The loop time the scope ends at (a ``timeout`` is resolved on entry); None: never."""
        return self._deadline

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop of the task that entered the scope (once entered)."""
        if self._task is None:
            raise RuntimeError("the CancelScope has not been entered")
        return self._task.get_loop()

    def cancel(self) -> None:
        """End the block at its next ``await`` (at once when it is entered later)."""
        self._cancel_called = True
        self._fire()

    def __enter__(self) -> CancelScope:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("CancelScope must be entered in an asyncio task")
        if self._state != _CREATED:
            raise RuntimeError("a CancelScope is entered once")
        self._task, self._cancelling, self._state = task, task.cancelling(), _ENTERED
        if self._timeout is not None:
            self._deadline = task.get_loop().time() + self._timeout
        if self._cancel_called:
            self._fire()
        elif self._deadline is not None:
            self._handle = task.get_loop().call_at(self._deadline, self._fire)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        fired, self._state = self._state == _FIRED, _LEFT
        assert self._task is not None
        if fired and self._task.uncancel() <= self._cancelling and exc_type is CancelledError:
            self.cancelled_caught = True  # our own cancellation, and no other is pending
            return True
        return None

    def _fire(self) -> None:
        if self._state != _ENTERED:
            return
        self._state = _FIRED
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        assert self._task is not None
        self._task.cancel()
