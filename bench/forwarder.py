"""The ceiling for a Python gateway on aiohttp: a bare pure-ASGI forwarder.

It reads the body, POSTs it to ``BENCH_UPSTREAM_URL`` with one shared ``aiohttp.ClientSession``
and returns the upstream's answer. No validation, no mapping: ``uvicorn bench.forwarder:app``.

``uvicorn bench.forwarder:app_http1`` does the same over the gateway's own upstream client
(``mesh_images_asgi/http1.py``): the ceiling for the gateway itself, so the gap between the two
forwarders is what the HTTP client costs, and the gap to the gateway is what the gateway does.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from mesh_images_asgi.http1 import Http1Pool

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9/v1/images/generations")
_JSON = {"content-type": "application/json"}

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]
"""POST a body upstream; the answer's status and body."""


def forwarder(post: Post, close: Callable[[], Awaitable[None]]) -> App:
    """The forwarder over ``post``; ``close`` at lifespan shutdown."""

    async def forward(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (message := await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await close()
                await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, payload = await post(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return forward


_session: aiohttp.ClientSession | None = None


async def _aiohttp_post(body: bytes) -> tuple[int, bytes]:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    async with _session.post(UPSTREAM, data=body, headers=_JSON) as upstream:
        return upstream.status, await upstream.read()


async def _aiohttp_close() -> None:
    if _session is not None:
        await _session.close()


_pool: Http1Pool | None = None


async def _http1_post(body: bytes) -> tuple[int, bytes]:
    global _pool
    if _pool is None:
        _pool = Http1Pool(connect_timeout=5, max_connections=256)
    upstream = await _pool.request("POST", UPSTREAM, _JSON, body)
    try:
        return upstream.status_code, await upstream.read()
    finally:
        upstream.close()


async def _http1_close() -> None:
    if _pool is not None:
        await _pool.aclose()


app = forwarder(_aiohttp_post, _aiohttp_close)
app_http1 = forwarder(_http1_post, _http1_close)
