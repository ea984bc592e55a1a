"""Hosting a generation's images in the image store: the one hook between a routed result and
its response items (``_store/base.py``)."""

from __future__ import annotations

import binascii
import logging
from dataclasses import replace

from mesh_images_asgi._core.errors import GatewayError, ImageStoreError
from mesh_images_asgi._domain.jobs import GeneratedImage, GenerationJob
from mesh_images_asgi._routing.router import Routed
from mesh_images_asgi._store.base import CONTENT_TYPES, REQUEST_BASE, ImageStore

__all__ = ["Publisher"]

logger = logging.getLogger("mesh_images_asgi")


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

    async def publish(self, routed: Routed) -> Routed:
        """Store the images of a generation: its result with URLs in their place."""
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
