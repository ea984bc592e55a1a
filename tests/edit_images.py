"""Input images for the edit tests: real PNG/JPEG/WebP bytes, masks, and hostile uploads."""

from __future__ import annotations

import base64
import io

from PIL import Image

__all__ = ["data_url", "encoded", "half_mask", "png_bomb", "solid"]


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def solid(
    width: int, height: int, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG"
) -> bytes:
    """A plain opaque image, with a few distinct pixels so that a resample shows."""
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 7):
        image.putpixel((x, x % height), (x % 256, 255 - x % 256, 90))
    return encoded(image, fmt)


def half_mask(width: int, height: int) -> bytes:
    """A PNG mask, opaque on the left half, transparent (alpha 0: edit here) on the right."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (width // 2, 0, width, height))
    return encoded(mask)


def png_bomb(edge: int = 20_000) -> bytes:
    """A real ``edge`` x ``edge`` PNG (a 1-bit image, a few kilobytes of zlib'd zeros)."""
    return encoded(Image.new("1", (edge, edge)))


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
