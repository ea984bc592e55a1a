"""The bounded request-body reader for our routes.

Checks happen before a byte is read where possible: content type, content encoding and a declared
``Content-Length`` over the limit. Chunked bodies are counted while they arrive, and reading stops
at the first byte past the limit. The whole body must arrive within a deadline (408
``request_timeout`` past it), so a client trickling bytes (slow loris) cannot hold a request open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from mesh_images_asgi._core.asgi import Receive, Scope, get_header
from mesh_images_asgi._core.cancel import CancelScope
from mesh_images_asgi._core.errors import RequestTimeout, RequestTooLarge, UnsupportedMediaType

__all__ = [
    "ClientDisconnected",
    "check_body_headers",
    "check_body_size",
    "chunks",
    "read_body",
    "within",
]

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away while sending its body: nothing is to be answered."""


def _is_json(content_type: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


def check_body_headers(scope: Scope, max_bytes: int) -> None:
    """Refuse a body we would not parse, before reading it."""
    content_type = get_header(scope, b"content-type")
    if content_type is not None and not _is_json(content_type):
        shown = content_type.decode("latin-1")[:100]
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {shown!r}.")
    check_body_size(scope, max_bytes)


def check_body_size(scope: Scope, max_bytes: int) -> None:
    """Refuse a compressed body, or one declared larger than ``max_bytes``, before reading it."""
    encoding = get_header(scope, b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        raise UnsupportedMediaType(
            "Content-Encoding is not supported on this route; send an uncompressed body."
        )
    declared = get_header(scope, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge(_too_large(max_bytes))


def _too_large(max_bytes: int) -> str:
    return f"Request body is larger than the limit of {max_bytes} bytes."


async def read_body(receive: Receive, max_bytes: int, time_limit: float | None = None) -> bytes:
    """Read the whole body (at most ``max_bytes``, within ``time_limit`` seconds when given).

    ``ClientDisconnected`` if the client left; 413 past the size, 408 past the deadline.
    """
    return await within(time_limit, _read(receive, max_bytes))


async def within(time_limit: float | None, reading: Awaitable[T]) -> T:
    """Await ``reading``, a body reader, for at most ``time_limit`` s (None: no limit); 408 past
    it."""
    if time_limit is None:
        return await reading
    with CancelScope(timeout=time_limit):
        return await reading
    raise RequestTimeout(f"The request body did not arrive within {time_limit:g} s.")


async def chunks(receive: Receive, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive (empty ones too), stopping at the first byte past
    ``max_bytes`` (413); ``ClientDisconnected`` if the client left."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge(_too_large(max_bytes))
        yield chunk
        if not message.get("more_body", False):
            return


async def _read(receive: Receive, max_bytes: int) -> bytes:
    parts = [chunk async for chunk in chunks(receive, max_bytes) if chunk]
    return parts[0] if len(parts) == 1 else b"".join(parts)
