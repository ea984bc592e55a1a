"""``providers/_http.py``: helpers shared by the providers."""

from __future__ import annotations

import base64

import pytest

from mesh_images_asgi.errors import UpstreamError
from mesh_images_asgi.providers._http import checked_base64


@pytest.mark.parametrize("raw", [b"ABC", b"AB", b"A", b"\x89PNG\r\n\x1a\n" * 1000])
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
