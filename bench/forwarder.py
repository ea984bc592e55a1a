"""The ceiling for a Python gateway on aiohttp: a bare pure-ASGI forwarder.

It reads the body, POSTs it to ``BENCH_UPSTREAM_URL`` with one shared ``aiohttp.ClientSession``
and returns the upstream's answer. No validation, no mapping: ``uvicorn bench.forwarder:app``.

``uvicorn bench.forwarder:app_http1`` does the same over the gateway's own upstream client
(``mesh_images_asgi/http1.py``): the ceiling for the gateway itself, so the gap between the two
forwarders is what the HTTP client costs, and the gap to the gateway is what the gateway does.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

from mesh_images_asgi.http1 import Http1Pool

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9/v1/images/generations")
_session: aiohttp.ClientSession | None = None
_pool: Http1Pool | None = None
_JSON = {"content-type": "application/json"}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    async with _session.post(
        UPSTREAM, data=body, headers={"content-type": "application/json"}
    ) as upstream:
        payload = await upstream.read()
        status = upstream.status
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


async def app_http1(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _pool
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if _pool is not None:
                await _pool.aclose()
            await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if _pool is None:
        _pool = Http1Pool(connect_timeout=5, max_connections=256)
    upstream = await _pool.request("POST", UPSTREAM, _JSON, body)
    try:
        payload = await upstream.read()
    finally:
        upstream.close()
    await send(
        {
            "type": "http.response.start",
            "status": upstream.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
