"""The ceiling for any Python gateway here: a bare pure-ASGI forwarder over aiohttp.

It reads the body, POSTs it to ``BENCH_UPSTREAM_URL`` with one shared ``aiohttp.ClientSession``
and returns the upstream's answer. No validation, no mapping: ``uvicorn bench.forwarder:app``.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9/v1/images/generations")
_session: aiohttp.ClientSession | None = None


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
