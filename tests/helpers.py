"""Shared test helpers: an in-process client for an ``ImagesApp``, and image decoding."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from PIL import Image

from mesh_images_asgi import ImagesApp, Settings

__all__ = ["app_client", "client_for", "decode_image", "decode_item"]


@asynccontextmanager
async def client_for(app: ImagesApp) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process httpx client for ``app``; the app is closed when the block ends."""
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await app.aclose()


@asynccontextmanager
async def app_client(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client wired to a fresh ``ImagesApp`` (local latency 0 unless given)."""
    settings.setdefault("local_latency", 0)
    async with client_for(ImagesApp(Settings(**settings), health=True)) as client:
        yield client


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def decode_item(item: dict[str, Any]) -> Image.Image:
    """Decode a response ``data`` item (``b64_json`` or a ``data:`` URL)."""
    if "b64_json" in item:
        return decode_image(base64.b64decode(item["b64_json"]))
    url: str = item["url"]
    assert url.startswith("data:image/")
    return decode_image(base64.b64decode(url.split(",", 1)[1]))
