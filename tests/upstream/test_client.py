"""The gateway's default upstream client (aiohttp); failures on both transports: tests/live;
hostile upstreams: tests/test_hostile_upstreams.py."""

from __future__ import annotations

import pytest

from mesh_images_asgi._core.asgi import Receive, Scope, Send
from mesh_images_asgi._upstream.aiohttp import AiohttpUpstream
from tests.support.live import serve


class CookieSetter:
    """An upstream that sets a cookie on every answer and records the cookies it is sent."""

    def __init__(self) -> None:
        self.cookies: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        cookie = headers.get(b"cookie")
        self.cookies.append(None if cookie is None else cookie.decode())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"set-cookie", b"__cf_bm=user-a-session; Path=/; HttpOnly"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.anyio
async def test_upstream_cookies_are_never_sent_back() -> None:
    # One client serves every user: a cookie set for one request must not ride on the next.
    upstream = CookieSetter()
    client = AiohttpUpstream(connect_timeout=5, max_connections=4, max_answer_bytes=2**20)
    try:
        with serve(upstream, lifespan="off") as url:
            for _ in range(2):
                named = url.replace("127.0.0.1", "localhost")  # a name a cookie jar would keep
                answer = await client.fetch("Test", named + "/v1/x", b"{}", {})
                assert answer.status_code == 200
                assert "set-cookie" in answer.headers
    finally:
        await client.aclose()
    assert upstream.cookies == [None, None]
