"""``providers/_http.py``: helpers shared by the providers."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from mesh_images_asgi._core.errors import UpstreamError
from mesh_images_asgi.providers._http import checked_base64


def encoded(fmt: str, size: tuple[int, int] = (64, 48)) -> str:
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("raw", [b"ABC", b"AB", b"A", b"GIF89a" * 1000])
def test_whole_base64_is_passed_on_unchanged(raw: bytes) -> None:
    value = base64.b64encode(raw).decode()
    assert checked_base64("OpenAI", value) is value


@pytest.mark.parametrize(
    "value",
    [
        "",  # nothing
        "QUJ",  # cut inside a quantum
        "QUJDRA",  # cut after a whole quantum
        "Q===",  # three padding characters
        "QQ===A==",  # padding inside
        "=QUJ",  # padding first
        "QQ==QUJD",  # a second image glued on
    ],
)
def test_anything_else_is_a_bad_response(value: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        checked_base64("OpenAI", value)
    assert raised.value.provider_code == "bad_response"
    assert "not whole base64" in raised.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_whole_image_passes(fmt: str) -> None:
    value = encoded(fmt)
    assert checked_base64("OpenAI", value) is value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_an_image_cut_on_a_base64_quantum_is_a_bad_response(fmt: str, keep: float) -> None:
    value = encoded(fmt)
    cut = value[: int(len(value) * keep) // 4 * 4]
    assert cut != value
    base64.b64decode(cut, validate=True)  # valid base64: only the image's structure tells
    with pytest.raises(UpstreamError) as raised:
        checked_base64("OpenAI", cut)
    assert raised.value.provider_code == "bad_response"
    assert "cut short" in raised.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_image_with_a_wrong_end_is_a_bad_response(fmt: str) -> None:
    raw = base64.b64decode(encoded(fmt))
    broken = base64.b64encode(raw[:-12] + b"\x01" * 12).decode()
    with pytest.raises(UpstreamError):
        checked_base64("OpenAI", broken)
