"""Is the client still there? A hook the ASGI layer sets and the layers below may call.

The request's disconnect listener (``_asgi/disconnect.py``) makes ``check_client`` meaningful
with ``watching``; code below the ASGI surface (the router, after a wait in a bulkhead's queue)
calls ``check_client`` before work the client may no longer want, without knowing of ASGI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["check_client", "one_turn", "watching"]

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


def one_turn() -> Awaitable[None]:
    """A running listener needs one turn of the loop to read a disconnect and cancel."""
    return asyncio.sleep(0)


@contextmanager
def watching(check: Callable[[], Awaitable[None]] = one_turn) -> Iterator[None]:
    """``check_client`` in the block (and in tasks made in it) runs ``check``."""
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)
