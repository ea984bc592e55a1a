"""In-flight generations, and draining them at shutdown.

``ImagesApp`` runs every generation request inside ``InFlight.track``. ``drain`` (the app calls
it before closing its resources: lifespan shutdown, ``aclose``):

1. stops new generations: the app answers them 503 ``provider_not_available`` (``Retry-After``);
2. waits up to ``patience`` seconds for the in-flight ones to finish;
3. cancels the rest: a JSON request that has not answered yet gets the same 503, a stream (already
   answered 200) gets a final error event and ``data: [DONE]`` from the stream writer;
4. waits (at most ``CUT_GRACE`` s) for the cancelled ones to write their last bytes.
"""

from __future__ import annotations

from types import TracebackType

import anyio

from mesh_images_asgi._core.asgi import Message, Send
from mesh_images_asgi._core.cancel import CancelScope

__all__ = ["CUT_GRACE", "InFlight", "Tracked"]

CUT_GRACE = 5.0


class Tracked:
    """One tracked request: ``with`` runs it in its cancel scope; and whether its response
    has started."""

    __slots__ = ("_inflight", "_send", "scope", "started")

    def __init__(self, inflight: InFlight, send: Send) -> None:
        self.scope = CancelScope()
        self.started = False
        self._inflight = inflight
        self._send = send

    def __enter__(self) -> Tracked:
        self.scope.__enter__()
        self._inflight._scopes.add(self.scope)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        self._inflight._left(self.scope)
        return self.scope.__exit__(exc_type, exc, traceback)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    @property
    def cut(self) -> bool:
        """The request was cancelled by ``drain``."""
        return self.scope.cancelled_caught


class InFlight:
    """The generation requests running now."""

    def __init__(self) -> None:
        self.draining = False
        self._scopes: set[CancelScope] = set()
        self._idle: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._scopes)

    def track(self, send: Send) -> Tracked:
        """``with inflight.track(send) as tracked``: run the block as an in-flight request;
        use ``tracked.send`` to answer it."""
        return Tracked(self, send)

    def _left(self, scope: CancelScope) -> None:
        self._scopes.discard(scope)
        if not self._scopes and self._idle is not None:
            self._idle.set()

    async def drain(self, patience: float) -> int:
        """Refuse new requests, let running ones finish for ``patience`` s, then cut the rest.

        Returns how many were cut. ``reopen`` accepts requests again.
        """
        self.draining = True
        await self._wait(patience)
        cut = list(self._scopes)
        for scope in cut:
            scope.cancel()
        await self._wait(CUT_GRACE)
        return len(cut)

    def reopen(self) -> None:
        self.draining = False

    async def _wait(self, patience: float) -> None:
        if not self._scopes:
            return
        self._idle = anyio.Event()
        with anyio.move_on_after(patience):
            await self._idle.wait()
        self._idle = None
