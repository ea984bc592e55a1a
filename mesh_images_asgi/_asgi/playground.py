"""The playground: one static page that drives this gateway's own API from a browser.

The page, its script, its stylesheet and the vendored Server-Sent Events parser are package data
(``playground_static/``): no build step, no CDN, nothing fetched but this gateway's API. Every
answer carries a strict Content-Security-Policy: scripts and styles only from this origin (none
inline), images from this origin, ``data:`` and ``blob:`` (the generated images and the image to
edit), requests only to this origin (or to the API origin given).

``PlaygroundApp`` is a pure ASGI app to mount anywhere (``host.mount("/playground",
PlaygroundApp(api_base="/images"))``); ``ImagesApp(playground=True)`` serves the same page at its
own root (the standalone server does). The page needs no gateway key: a key typed into it is
kept in the page's memory and sent on its API requests only.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from importlib.resources import files
from urllib.parse import urlsplit

from mesh_images_asgi._asgi.error_response import send_error
from mesh_images_asgi._asgi.request_id import request_id_from_header
from mesh_images_asgi._core.asgi import Receive, Scope, Send, get_header, route_path, send_bytes
from mesh_images_asgi._core.errors import GatewayError, MethodNotAllowed, NotFound

__all__ = ["PAGE_PATHS", "PlaygroundApp"]

_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
}
PAGE_PATHS = {
    "/": "index.html",
    "/playground.js": "playground.js",
    "/playground.css": "playground.css",
    "/vendor/eventsource-parser.js": "vendor/eventsource-parser.js",
}
"""Route path -> file of ``playground_static/``."""
_API_BASE_MARK = b"__MESH_API_BASE__"


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: bytes


def _csp(api_base: str) -> bytes:
    parts = urlsplit(api_base)
    other_origin = f" {parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data: blob:{other_origin}; connect-src 'self'{other_origin}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ).encode()


def _load(api_base: str) -> dict[str, _Asset]:
    root = files(__package__ or "mesh_images_asgi._asgi") / "playground_static"
    assets = {}
    for path, name in PAGE_PATHS.items():
        body = (root / name).read_bytes()
        if name == "index.html":
            body = body.replace(_API_BASE_MARK, html.escape(api_base).encode())
        assets[path] = _Asset(body, _TYPES[name.rsplit(".", 1)[1]])
    return assets


class PlaygroundApp:
    """The playground page as a pure ASGI app.

    **Parameters:**

    * **api_base** - where the images API is, as the browser sees it: a path (``"/images"``) or
      an origin and path (``"https://images.example.com"``, added to the page's
      ``connect-src``). Empty (the default): the API answers where the page is mounted (how
      ``ImagesApp(playground=True)`` serves it).

    ``GET``/``HEAD`` only; anything else is our error envelope (404, 405).
    """

    def __init__(self, api_base: str = "") -> None:
        self._assets = _load(api_base)
        self._headers = [
            (b"content-security-policy", _csp(api_base)),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-cache"),
        ]

    @staticmethod
    def serves(path: str) -> bool:
        """Whether ``path`` (below the mount point) is one of the page's files."""
        return path in PAGE_PATHS or path == ""

    async def respond(self, scope: Scope, send: Send, request_id: str) -> int:
        """Answer a ``GET``/``HEAD`` of one of the page's paths (``serves``); the body's bytes."""
        path = route_path(scope)
        tagged = [(b"x-request-id", request_id.encode())]
        if path == "":  # mounted, asked without the trailing slash: relative URLs need it
            location = (scope.get("root_path", "") + "/").encode()
            await send_bytes(send, 308, b"", b"text/plain", [(b"location", location), *tagged])
            return 0
        asset = self._assets[path]
        body = b"" if scope["method"] == "HEAD" else asset.body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", asset.content_type),
                    (b"content-length", str(len(asset.body)).encode()),
                    *self._headers,
                    *tagged,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return len(body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        request_id = request_id_from_header(get_header(scope, b"x-request-id"))
        try:
            if not self.serves(route_path(scope)):
                raise NotFound(f"No route for {scope['path']!r}.")
            if scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed(scope["method"], ["GET", "HEAD"])
            await self.respond(scope, send, request_id)
        except GatewayError as error:
            await send_error(send, error, request_id)
