"""The embedded offline renderer: real images drawn with Pillow, no network, no keys.

Each image is an abstract composition (a gradient, shapes, the prompt's words) seeded from the
prompt, the seed and the image's index, so it is deterministic for the same inputs and visibly
different across prompts. Rendering runs in a worker thread; the simulated latency is the time of
the whole generation, whatever ``n`` is: the provider waits first and renders last (timed from its
previous renders), so that thousands of waiting generations hold no images. Asked for partial
images on a stream, it sends them spread over that time, drawn with less detail than the final
image.

Rendering is CPU work, so it has its own bound (the waiting does not): at most ``threads``
generations render at once (by default one per core), in threads of their own, ``queue`` more
wait for one, and past that a generation is refused at once with 503 ``provider_not_available``
and ``Retry-After`` (the bulkhead of ``_core/bulkhead.py``), instead of every request sharing the
cores.
Edits (a job with ``inputs``) are real image operations on the uploads, painting with the same
compositions (``local_edit``), under the same bound.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import textwrap
import time

import anyio
import anyio.to_thread
from PIL import Image, ImageDraw, ImageFont

from mesh_images_asgi._core.bulkhead import Bulkhead
from mesh_images_asgi._domain.catalog import parse_wxh
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialImage,
    PartialSink,
    ProviderResult,
)
from mesh_images_asgi.providers.local_edit import edit_image, edit_size

__all__ = ["LocalProvider", "compose", "encode", "render_image"]

_SHAPES = {"low": 8, "medium": 18, "standard": 18, "auto": 18, "high": 32, "hd": 32}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def _color(rng: random.Random, alpha: int) -> tuple[int, int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256), alpha)


def render_image(
    prompt: str,
    *,
    seed: int | None,
    index: int,
    width: int,
    height: int,
    output_format: str,
    quality: str = "auto",
    transparent: bool = False,
    compression: int | None = None,
    detail: float = 1.0,
) -> bytes:
    """Render one image and return it encoded in ``output_format``.

    ``detail`` below 1 draws only that share of the shapes: the partial images of a stream.
    """
    image = compose(
        prompt,
        seed=seed,
        index=index,
        width=width,
        height=height,
        quality=quality,
        transparent=transparent,
        detail=detail,
    )
    return encode(image, output_format, quality=quality, compression=compression)


def compose(
    prompt: str,
    *,
    seed: int | None,
    index: int,
    width: int,
    height: int,
    quality: str = "auto",
    transparent: bool = False,
    detail: float = 1.0,
) -> Image.Image:
    """The composition for ``prompt`` (what ``render_image`` encodes; edits paint with it)."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    rng = random.Random(digest)
    if transparent:
        image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    else:
        top, bottom = _color(rng, 255)[:3], _color(rng, 255)[:3]
        ramp = Image.new("RGB", (1, 2))  # RGB: shapes blend onto it and it stays opaque
        ramp.putdata([top, bottom])
        image = ramp.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image, "RGBA")
    unit = min(width, height)
    for _ in range(round(_SHAPES.get(quality, 18) * detail)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(unit // 16 + 1, unit // 3 + 2)
        box = (x - r, y - r, x + r, y + r)
        kind = rng.randrange(3)
        fill = _color(rng, rng.randrange(120, 230))
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            points = [(rng.randrange(width), rng.randrange(height)) for _ in range(3)]
            draw.polygon(points, fill=fill)
    font = ImageFont.load_default(size=max(10, unit // 20))
    text = "\n".join(textwrap.wrap(prompt, width=max(8, width // max(6, unit // 40)))[:4])
    margin = unit // 20
    draw.multiline_text((margin + 2, margin + 2), text, font=font, fill=(0, 0, 0, 200))
    draw.multiline_text((margin, margin), text, font=font, fill=(255, 255, 255, 255))
    return image


def encode(
    image: Image.Image, output_format: str, *, quality: str = "auto", compression: int | None
) -> bytes:
    """``image`` in ``output_format`` (jpeg: without its alpha channel)."""
    if output_format == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    options: dict[str, int] = {}
    if output_format in ("jpeg", "webp"):
        options["quality"] = 90 if compression is None else compression
    else:
        options["compress_level"] = 1 if quality == "low" else 6
    image.save(buffer, _PIL_FORMAT[output_format], **options)
    return buffer.getvalue()


class LocalProvider:
    """``local/*`` models: the renderer above, with a simulated latency."""

    name = "local"

    def __init__(
        self, latency: float = 2.0, *, threads: int | None = None, queue: int = 64
    ) -> None:
        """``threads`` generations render at once (None: one per core), ``queue`` more wait."""
        self.latency = latency
        self._seconds_per_pixel = 0.0
        threads = threads or os.cpu_count() or 1
        self.renderer = Bulkhead("The local renderer", threads, queue)
        self._threads = anyio.CapacityLimiter(threads)

    async def _render(
        self, job: GenerationJob, width: int, height: int, index: int, detail: float = 1.0
    ) -> str:
        return await anyio.to_thread.run_sync(
            _render_b64, job, width, height, index, detail, limiter=self._threads
        )

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        started = time.monotonic()
        request = job.request
        width, height = _dimensions(job)
        # Worker-thread calls, one image each: a cancellation waits for at most one render.
        partials = (request.partial_images or 0) if on_partial is not None else 0
        for step in range(partials):
            share = (step + 1) / (partials + 1)
            async with self.renderer.slot():
                b64 = await self._render(job, width, height, 0, share)
            await self._wait_until(started + self.latency * share)
            assert on_partial is not None
            await on_partial(PartialImage(b64_json=b64, index=step))
        # Wait first and render last, so that a waiting generation holds no image; the renders
        # start when the measured render time says they will end at the deadline.
        pixels = width * height * request.n
        await self._wait_until(started + self.latency - self._seconds_per_pixel * pixels)
        async with self.renderer.slot():
            rendering = time.monotonic()
            images = [
                GeneratedImage(b64_json=await self._render(job, width, height, index))
                for index in range(request.n)
            ]
            self._seconds_per_pixel = (time.monotonic() - rendering) / pixels
        await self._wait_until(started + self.latency)
        return ProviderResult(
            images=images,
            created=int(time.time()),
            output_format=job.output_format,
            background="transparent" if request.background == "transparent" else "opaque",
            quality=_quality(job),
            size=f"{width}x{height}",
        )

    @staticmethod
    async def _wait_until(moment: float) -> None:
        remaining = moment - time.monotonic()
        if remaining > 0:
            await anyio.sleep(remaining)

    async def aclose(self) -> None:
        return None


def _dimensions(job: GenerationJob) -> tuple[int, int]:
    if job.inputs is not None:
        return edit_size(job)
    size = job.size if job.size not in (None, "auto") else job.entry.default_size
    return parse_wxh(size or "1024x1024") or (1024, 1024)


def _quality(job: GenerationJob) -> str:
    quality = job.request.quality
    return quality if quality not in (None, "auto") else "medium"


def _render_b64(
    job: GenerationJob, width: int, height: int, index: int, detail: float = 1.0
) -> str:
    request = job.request
    if job.inputs is not None:

        def painting(width: int, height: int) -> Image.Image:
            return compose(
                request.prompt,
                seed=request.seed,
                index=index,
                width=width,
                height=height,
                quality=_quality(job),
                detail=detail,
            )

        data = encode(
            edit_image(job, painting),
            job.output_format,
            quality=_quality(job),
            compression=request.output_compression,
        )
    else:
        data = render_image(
            request.prompt,
            seed=request.seed,
            index=index,
            width=width,
            height=height,
            output_format=job.output_format,
            quality=_quality(job),
            transparent=request.background == "transparent",
            compression=request.output_compression,
            detail=detail,
        )
    return base64.b64encode(data).decode("ascii")
