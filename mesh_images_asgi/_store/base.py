"""The image store: where ``response_format: "url"`` images are kept, and the links to them.

::

    ImageStore          put(bytes, content type, time to live, public base) -> URL; aclose()
     ├── EmbeddedStore  files in a directory, served by the gateway, HMAC-signed URLs
     │                  (_store/embedded.py; the HTTP side is _asgi/hosted.py)
     └── S3Store        any S3-compatible bucket, presigned URLs (_store/s3.py, the ``s3`` extra)

``MESH_IMAGES_STORE=none`` is no store at all: base64 answers stay ``data:`` URLs
(``_asgi/responses.py``). ``store_factory.create_store`` picks the store the settings name;
``publisher.Publisher`` is the one hook between a generation and its response items: it swaps each
base64 image of a routed result for the URL of a stored copy, so the JSON answer and the stream's
final chunk carry the same URLs. A store failure is ``ImageStoreError`` (502): the client gets
URLs that work or an error, never a link to nothing.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Protocol

__all__ = ["CONTENT_TYPES", "EXTENSIONS", "REQUEST_BASE", "ImageStore", "default_store_dir"]

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
"""``output_format`` -> the stored image's content type."""
EXTENSIONS = {content_type: fmt for fmt, content_type in CONTENT_TYPES.items()}
"""Content type -> the stored file's extension."""

REQUEST_BASE: ContextVar[str] = ContextVar("mesh_images_request_base", default="")
"""The public base URL (``http://host/root/``) of the request being served; the app sets it for
stores that link to the gateway itself."""


class ImageStore(Protocol):
    """Keeps image bytes until an expiry and hands out a URL that fetches them until then."""

    async def put(self, data: bytes, content_type: str, ttl: int, base: str) -> str:
        """Store ``data``; return a URL valid for ``ttl`` seconds (by the store's clock).
        ``base`` is the gateway's public base URL (ending in ``/``), for stores served by it."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources."""
        ...


def default_store_dir() -> Path:
    """``mesh-images/images`` in the user's cache directory (``$XDG_CACHE_HOME`` or
    ``~/.cache``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mesh-images" / "images"
