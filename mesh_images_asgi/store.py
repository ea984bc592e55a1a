"""The image store: where ``response_format: "url"`` images are kept, and the links to them.

::

    ImageStore          put(bytes, content type, time to live, public base) -> URL; aclose()
     ├── EmbeddedStore  files in a directory, served by the gateway, HMAC-signed URLs
     │                  (store_embedded.py; the HTTP side is hosted.py)
     └── S3Store        any S3-compatible bucket, presigned URLs (store_s3.py, the ``s3`` extra)

``MESH_IMAGES_STORE=none`` is no store at all: base64 answers stay ``data:`` URLs
(``responses.py``). ``Publisher`` is the one hook between a generation and its response items: it
swaps each base64 image of a routed result for the URL of a stored copy, so the JSON answer and
the stream's final chunk carry the same URLs. A store failure is ``ImageStoreError`` (502): the
client gets URLs that work or an error, never a link to nothing.
"""

from __future__ import annotations

import binascii
import logging
import os
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from .config import ConfigError, Settings
from .errors import GatewayError, ImageStoreError
from .providers.base import GeneratedImage, GenerationJob
from .routing import Routed

__all__ = [
    "CONTENT_TYPES",
    "EXTENSIONS",
    "REQUEST_BASE",
    "ImageStore",
    "Publisher",
    "create_store",
    "default_store_dir",
]

logger = logging.getLogger("mesh_images_asgi")

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


def create_store(settings: Settings) -> ImageStore | None:
    """The store ``MESH_IMAGES_STORE`` names, or None for ``none``."""
    if settings.store == "none":
        return None
    if settings.store.startswith("s3://"):
        try:
            from .store_s3 import S3Store  # the ``s3`` extra: imported only when configured
        except ImportError:
            raise ConfigError(
                "MESH_IMAGES_STORE=s3://... needs the s3 extra: pip install 'mesh-images-asgi[s3]'"
            ) from None
        return S3Store.from_url(settings.store, tags=settings.store_tags)
    from .store_embedded import EmbeddedStore

    key = settings.store_key.get_secret_value().encode() if settings.store_key else None
    directory = settings.store_dir or default_store_dir()
    return EmbeddedStore.open(directory, key=key, max_bytes=settings.store_max_bytes)


class Publisher:
    """Hosts the base64 images of ``url`` answers in ``store`` (upstream URLs stay as they are).

    ``public_url`` replaces the request's own base (``REQUEST_BASE``) in the store's links.
    """

    def __init__(self, store: ImageStore, ttl: int, public_url: str | None = None) -> None:
        self.store = store
        self._ttl = ttl
        self._public_url = public_url.rstrip("/") + "/" if public_url else None

    @property
    def needs_request_base(self) -> bool:
        return self._public_url is None

    @staticmethod
    def wants(job: GenerationJob) -> bool:
        return job.request.response_format == "url"

    async def publish(self, run: Awaitable[Routed]) -> Routed:
        """Await the generation, then store its images: the result with URLs in their place."""
        routed = await run
        result = routed.result
        fmt = result.output_format or routed.job.output_format
        content_type = CONTENT_TYPES.get(fmt, "application/octet-stream")
        base = self._public_url or REQUEST_BASE.get()
        images = [await self._host(image, content_type, base) for image in result.images]
        return replace(routed, result=replace(result, images=images))

    async def _host(self, image: GeneratedImage, content_type: str, base: str) -> GeneratedImage:
        if image.b64_json is None:
            return image
        data = binascii.a2b_base64(image.b64_json)  # twice as fast as base64.b64decode(str)
        try:
            url = await self.store.put(data, content_type, self._ttl, base)
        except GatewayError:
            raise
        except Exception as exc:
            logger.warning("mesh-images: the image store failed: %s", type(exc).__name__)
            raise ImageStoreError(
                "The images were generated but the image store could not keep them "
                f"({type(exc).__name__}); retry, or ask for response_format b64_json."
            ) from None
        return GeneratedImage(url=url, revised_prompt=image.revised_prompt)
