"""The lifespan of a wrapped host: forwarded untouched, with our resources tied to it.

``ImagesMiddleware`` hands the lifespan scope to the host with two thin wrappers that observe,
never alter, the messages: every message the server sends reaches the host as the same object,
and every message the host sends reaches the server as the same object, in the same order.

- When the host sends ``lifespan.startup.complete``, our resources start first, then the message
  goes on: the server's startup completes once both are up. If ours fail, the server gets
  ``lifespan.startup.failed`` (with our message) in its place: the one deliberate substitution.
- When the host sends ``lifespan.shutdown.complete`` (or ``.failed``), ours close first, then the
  message goes on: our upstream client outlives every host shutdown hook that might still use it.
- A host without lifespan support raises before receiving anything (Django's ``ASGIHandler``
  raises ``ValueError`` for any non-HTTP scope) or returns at once. Then we answer the protocol
  ourselves with ``fallback`` (the ``ImagesApp``), so the server's lifespan still starts and
  closes our resources, and a server started with ``--lifespan on`` no longer refuses the host.
- A host that fails after receiving a message fails as it would have without us: the exception
  propagates to the server. Resources we already started are closed first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from mesh_images_asgi._core.asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["run_host_lifespan"]

logger = logging.getLogger("mesh_images_asgi")

_SHUTDOWN_DONE = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})
_CLOSE_TIMEOUT = 10.0


async def run_host_lifespan(
    host: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    startup: Callable[[], Awaitable[object]],
    shutdown: Callable[[], Awaitable[None]],
    fallback: ASGIApp,
) -> None:
    """Run ``host``'s lifespan with ``startup``/``shutdown`` of ours after its own."""
    host_touched = False
    started = False

    async def host_receive() -> Message:
        nonlocal host_touched
        host_touched = True
        return await receive()

    async def host_send(message: Message) -> None:
        nonlocal host_touched, started
        host_touched = True
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            try:
                await startup()
            except Exception as exc:
                logger.exception("mesh-images: startup failed")
                await send({"type": "lifespan.startup.failed", "message": f"mesh-images: {exc}"})
                return
            started = True
        elif kind in _SHUTDOWN_DONE and started:
            started = False
            await _close(shutdown)
        await send(message)

    try:
        await host(scope, host_receive, host_send)
    except Exception:
        if host_touched:
            raise
        logger.debug("mesh-images: the host has no lifespan; answering it ourselves", exc_info=True)
    else:
        if host_touched:
            return
    finally:
        if started:
            await _close(shutdown)
    await fallback(scope, receive, send)


async def _close(shutdown: Callable[[], Awaitable[None]]) -> None:
    # Shielded: the host's lifespan task may be cancelled by the server, and our client must
    # still be closed rather than left to the loop's finaliser.
    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        try:
            await shutdown()
        except Exception:
            logger.exception("mesh-images: closing resources failed")
