"""A ``GatewayError`` as an HTTP answer: the contract's envelope, ``x-request-id`` and the
error's own headers (``Retry-After``, ``Allow``, ...). Every ASGI app of the package answers its
errors with it."""

from __future__ import annotations

from mesh_images_asgi._core.asgi import Send, send_bytes
from mesh_images_asgi._core.errors import GatewayError

__all__ = ["send_error"]


async def send_error(send: Send, error: GatewayError, request_id: str) -> int:
    """Send ``error`` as one complete response; returns the body's length."""
    body = error.envelope(request_id)
    await send_bytes(
        send,
        error.status,
        body,
        b"application/json",
        [(b"x-request-id", request_id.encode()), *error.response_headers()],
    )
    return len(body)
