"""The ceiling for a Python gateway on each candidate client: a bare pure-ASGI forwarder.

It reads the body, POSTs it to ``BENCH_UPSTREAM_URL`` with one shared client and returns the
upstream's answer. No validation, no mapping. One app per candidate upstream client:

    uvicorn bench.forwarder:app               aiohttp ``ClientSession`` (the ratios' reference)
    uvicorn bench.forwarder:app_pyreqwest     pyreqwest (Rust reqwest)
    uvicorn bench.forwarder:app_httpx_aiohttp httpx's API over aiohttp (``httpx-aiohttp``)
    uvicorn bench.forwarder:app_httpx         plain ``httpx.AsyncClient`` (the reference)

The candidates other than aiohttp come from the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9/v1/images/generations")
_JSON = {"content-type": "application/json"}

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]
"""POST a body upstream; the answer's status and body."""
Close = Callable[[], Awaitable[None]]


def forwarder(post: Post, close: Close) -> App:
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


def _aiohttp() -> tuple[Post, Close]:
    session: list[aiohttp.ClientSession] = []

    async def post(body: bytes) -> tuple[int, bytes]:
        if not session:
            session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)))
        async with session[0].post(UPSTREAM, data=body, headers=_JSON) as upstream:
            return upstream.status, await upstream.read()

    async def close() -> None:
        if session:
            await session[0].close()

    return post, close


def _pyreqwest() -> tuple[Post, Close]:
    from pyreqwest.client import Client, ClientBuilder

    client: list[Client] = []

    async def post(body: bytes) -> tuple[int, bytes]:
        if not client:
            client.append(ClientBuilder().max_connections(256).build())
        request = client[0].post(UPSTREAM).headers(_JSON).body_bytes(body).build()
        upstream = await request.send()
        return upstream.status, bytes(await upstream.bytes())

    async def close() -> None:
        if client:
            await client[0].close()

    return post, close


def _httpx(client_class: Callable[..., httpx.AsyncClient]) -> tuple[Post, Close]:
    client: list[httpx.AsyncClient] = []

    async def post(body: bytes) -> tuple[int, bytes]:
        if not client:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
            client.append(client_class(limits=limits))
        upstream = await client[0].post(UPSTREAM, content=body, headers=_JSON)
        return upstream.status_code, upstream.content

    async def close() -> None:
        if client:
            await client[0].aclose()

    return post, close


def _httpx_aiohttp() -> tuple[Post, Close]:
    from httpx_aiohttp import HttpxAiohttpClient

    return _httpx(HttpxAiohttpClient)


app = forwarder(*_aiohttp())
app_pyreqwest = forwarder(*_pyreqwest())
app_httpx_aiohttp = forwarder(*_httpx_aiohttp())
app_httpx = forwarder(*_httpx(httpx.AsyncClient))
