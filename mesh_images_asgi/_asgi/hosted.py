"""The HTTP side of the embedded image store: ``GET``/``HEAD {mount}/v1/images/hosted/{name}``.

The store checks the URL (``store_embedded.locate``); Starlette's ``FileResponse`` sends the file,
with ``Content-Length``, ``Range`` (206, multipart ranges, 416) and ``If-Range``. We add the
``ETag`` (the image's id: a stored image never changes), ``Cache-Control`` running out with the
URL, and ``If-None-Match`` (304). No gateway key is asked for: the signed URL is the credential.

``request_base`` is the public base URL of a request, built as Starlette's ``url_for`` builds it:
scheme, ``Host`` header (else the server address) and root path. Behind a proxy that changes the
scheme or host, run the server with its proxy-headers option (uvicorn ``--proxy-headers``,
``--forwarded-allow-ips``) or set ``MESH_IMAGES_PUBLIC_URL``.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse

from mesh_images_asgi._core.asgi import Receive, Scope, Send, get_header
from mesh_images_asgi._core.errors import NotFound
from mesh_images_asgi._store.embedded import HOSTED_PREFIX, EmbeddedStore

__all__ = ["request_base", "serve_hosted"]


def request_base(scope: Scope) -> str:
    """``scheme://host/root_path/``: Starlette's ``base_url``, with our mount point as its root.

    (Starlette starts at ``app_root_path``, the host's own root, because ``url_for`` then adds
    the mount prefixes from its route table; ours is not in that table, so our base is
    ``root_path``, which includes them.)
    """
    return str(Request({**scope, "app_root_path": scope.get("root_path", "")}).base_url)


async def serve_hosted(
    store: EmbeddedStore, path: str, scope: Scope, receive: Receive, send: Send, request_id: str
) -> int:
    """Answer one fetch of ``path`` (below the mount point); raises the ``GatewayError`` that
    says why not. Returns the size of the image."""
    name = path[len(HOSTED_PREFIX) :]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    file = store.locate(name, *(query.get(key, [None])[0] for key in ("expires", "signature")))
    try:
        stat = await anyio.to_thread.run_sync(os.stat, file.path)
    except FileNotFoundError:
        raise NotFound(
            "No such image (it expired, or the store made room for newer ones)."
        ) from None
    headers = {
        "cache-control": f"public, max-age={store.remaining(file)}, immutable",
        "etag": file.etag,
        "x-request-id": request_id,
    }
    if get_header(scope, b"if-none-match") == file.etag.encode():
        await send({"type": "http.response.start", "status": 304, "headers": _raw(headers)})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 0
    response = FileResponse(
        file.path, headers=headers, media_type=file.content_type, stat_result=stat
    )
    await response(scope, receive, send)
    return stat.st_size


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(key.encode(), value.encode()) for key, value in headers.items()]
