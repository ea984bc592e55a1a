"""``mesh-images serve``'s server: uvicorn, whose graceful shutdown drains the app first.

On SIGTERM (or a first Ctrl+C) uvicorn stops accepting, then waits for every connection to
finish, without limit unless ``timeout_graceful_shutdown`` is set, after which it cancels the
request tasks: a JSON request then gets no answer at all. So the shutdown here is::

    1. stop accepting connections (the listening sockets close);
    2. ``ImagesApp.drain()``: new generations on open connections get 503 (``ImagesApp.draining``
       is true, and ``/healthz`` answers 503); running ones get ``MESH_IMAGES_DRAIN_TIMEOUT``
       seconds to finish; then each stream ends with its error event and ``[DONE]`` and each
       JSON request that has not answered gets 503 ``provider_not_available``;
    3. uvicorn's own shutdown, with ``timeout_graceful_shutdown`` = the drain timeout too, for
       what is not a generation (a slow ``/v1/models`` reader); then lifespan shutdown; exit.

A second signal makes uvicorn exit at once, as usual.
"""

from __future__ import annotations

import socket

import uvicorn

from mesh_images_asgi._asgi.app import ImagesApp

__all__ = ["DrainingServer"]


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` for one ``ImagesApp`` that drains it before shutting down."""

    def __init__(self, config: uvicorn.Config, app: ImagesApp) -> None:
        super().__init__(config)
        self.images_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting; uvicorn's shutdown closes them again, harmlessly
        for sock in sockets or []:
            sock.close()
        await self.images_app.drain()
        await super().shutdown(sockets)
