"""A bulkhead per provider: at most ``limit`` calls at once, ``queue`` more waiting, no more.

A provider that slows down fills its own slots and its own queue; beyond them calls are refused
at once (503 ``provider_not_available`` with ``Retry-After``) instead of piling up, and the other
providers keep their capacity. Slots are handed to waiters first come, first served; a waiter that
is cancelled (its client left, its deadline passed) gives up its place, or passes on the slot it
was just handed.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

import anyio

from mesh_images_asgi._core.errors import ProviderNotAvailable

__all__ = ["Bulkhead"]

RETRY_AFTER = 1.0


class Bulkhead:
    """Concurrency limit with a bounded queue for one provider."""

    def __init__(self, name: str, limit: int, queue: int) -> None:
        self.name = name
        self.limit = limit
        self.queue = queue
        self.active = 0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def slot(self) -> _Slot:
        """``async with bulkhead.slot()``: hold one slot for the block; ``ProviderNotAvailable``
        when slots and queue are full."""
        return _Slot(self)

    async def _wait(self) -> None:
        if len(self._waiters) >= self.queue:
            raise ProviderNotAvailable(
                f"{self.name} is at its limit of {self.limit} concurrent generations and "
                f"{self.queue} waiting; retry shortly.",
                retry_after_seconds=RETRY_AFTER,
            )
        handed = anyio.Event()
        self._waiters.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self._release()  # the slot came with the cancellation: pass it on
            else:
                self._waiters.remove(handed)
            raise

    def _release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # the slot moves to the waiter; ``active`` is unchanged
        else:
            self.active -= 1


class _Slot:
    """One slot of a bulkhead, held for an ``async with`` block (a class: this is per request)."""

    __slots__ = ("_bulkhead",)

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead

    async def __aenter__(self) -> bool:
        """True when the slot had to be waited for (the client may have left meanwhile)."""
        bulkhead = self._bulkhead
        if bulkhead.active < bulkhead.limit and not bulkhead._waiters:
            bulkhead.active += 1  # a free slot: no coroutine to make and wait on
            return False
        await bulkhead._wait()
        return True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bulkhead._release()
