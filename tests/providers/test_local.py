"""The embedded renderer: real images, deterministic, different across prompts, off the loop."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from PIL import ImageChops

from mesh_images_asgi._domain.catalog import load_catalog
from mesh_images_asgi._domain.jobs import GenerationJob
from mesh_images_asgi._domain.schemas import ImageRequest
from mesh_images_asgi.providers.local import LocalProvider, render_image
from tests.helpers import decode_image


def _render(prompt: str = "a fox", **options: object) -> bytes:
    args: dict[str, object] = {
        "seed": None,
        "index": 0,
        "width": 96,
        "height": 64,
        "output_format": "png",
    }
    args.update(options)
    return render_image(prompt, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_renders_the_requested_format_and_size(fmt: str, pil: str) -> None:
    image = decode_image(_render(output_format=fmt, width=200, height=120))
    assert image.format == pil
    assert image.size == (200, 120)


def test_deterministic_for_prompt_and_seed_and_different_otherwise() -> None:
    assert _render("a fox", seed=1) == _render("a fox", seed=1)
    base = decode_image(_render("a fox", seed=1)).convert("RGB")
    for other in (
        _render("a fox", seed=2),
        _render("a cat", seed=1),
        _render("a fox", seed=1, index=1),
    ):
        difference = ImageChops.difference(base, decode_image(other).convert("RGB"))
        assert difference.getbbox() is not None


def test_transparent_background_has_alpha() -> None:
    image = decode_image(_render(transparent=True))
    assert image.mode == "RGBA"
    alpha = image.getchannel("A").getextrema()
    assert alpha[0] == 0  # some pixels are fully transparent
    opaque = decode_image(_render())
    assert opaque.mode == "RGB"


def test_compression_changes_the_encoding() -> None:
    small = _render(output_format="jpeg", compression=5, width=256, height=256)
    large = _render(output_format="jpeg", compression=95, width=256, height=256)
    assert len(small) < len(large)


def _job(**fields: object) -> GenerationJob:
    entry = load_catalog().resolve("local/sketch")
    request = ImageRequest.model_validate({"prompt": "a fox", "model": "local/sketch", **fields})
    return GenerationJob(
        entry=entry,
        request=request,
        size=entry.resolve_size(request.size),
        output_format=request.output_format or "png",
    )


@pytest.mark.anyio
async def test_generate_n_images_with_metadata() -> None:
    result = await LocalProvider(latency=0).generate(_job(n=3, size="3:2", quality="low"))
    assert len(result.images) == 3
    assert len({image.b64_json for image in result.images}) == 3
    assert result.size == "1536x1024"
    assert result.quality == "low"
    assert result.background == "opaque"
    assert result.output_format == "png"


@pytest.mark.anyio
async def test_latency_covers_the_whole_generation_and_rendering_is_off_the_loop() -> None:
    threads: set[int] = set()
    original = render_image

    def spy(*args: object, **kwargs: object) -> bytes:
        threads.add(threading.get_ident())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    import mesh_images_asgi.providers.local as local

    local.render_image = spy
    try:
        started = time.monotonic()
        await LocalProvider(latency=0.3).generate(_job(n=4, size="64x64"))
        elapsed = time.monotonic() - started
    finally:
        local.render_image = original
    assert 0.3 <= elapsed < 1.5
    assert threading.get_ident() not in threads


@pytest.mark.anyio
async def test_cancellation_stops_between_images() -> None:
    provider = LocalProvider(latency=5)
    with anyio.move_on_after(0.2) as scope:
        await provider.generate(_job(n=2, size="64x64"))
    assert scope.cancelled_caught
