"""The streaming multipart reader: parts across any chunking, and limits that stop the reading."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mesh_images_asgi._asgi.form import FormLimits, boundary_of, read_form
from mesh_images_asgi._core.errors import RequestTooLarge


def encoded_form(files: list[tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, bytes]:
    """A multipart body as a client sends it (httpx's encoder) and its content type."""
    request = httpx.Request(
        "POST",
        "http://t/",
        data=fields,
        files=[(name, (f"{name}.bin", data, "application/octet-stream")) for name, data in files],
    )
    return request.read(), request.headers["content-type"].encode()


class Receive:
    """An ASGI ``receive`` handing out ``body`` in pieces of ``size`` bytes; counts its calls."""

    def __init__(self, body: bytes, size: int) -> None:
        self.pieces = [body[at : at + size] for at in range(0, len(body), size)]
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        piece = self.pieces[self.calls]
        self.calls += 1
        return {"type": "http.request", "body": piece, "more_body": self.calls < len(self.pieces)}


LIMITS = FormLimits(max_body_bytes=1_000_000, max_file_bytes=10_000, max_files=3)


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
async def test_parts_come_out_whole_however_the_body_is_cut(size: int) -> None:
    image, mask = bytes(range(256)) * 20, b"\r\n--not-the-boundary\r\n" * 10
    body, content_type = encoded_form([("image", image), ("mask", mask)], {"prompt": "a cat"})
    parts = await read_form(Receive(body, size), boundary_of(content_type), LIMITS, None)
    assert [(p.name, p.filename, bytes(p.data)) for p in parts] == [
        ("prompt", None, b"a cat"),
        ("image", "image.bin", image),
        ("mask", "mask.bin", mask),
    ]


@pytest.mark.anyio
async def test_a_file_past_its_limit_stops_the_reading_there() -> None:
    body, content_type = encoded_form([("image", b"x" * 200_000)], {})
    receive = Receive(body, 1000)
    with pytest.raises(RequestTooLarge) as refused:
        await read_form(receive, boundary_of(content_type), LIMITS, None)
    assert refused.value.param == "image"
    assert receive.calls <= 12  # ~10 KB read of 200 KB: the rest was never asked for


@pytest.mark.anyio
async def test_too_many_files_and_too_large_a_body_are_413() -> None:
    body, content_type = encoded_form([("image", b"x")] * 4, {})
    with pytest.raises(RequestTooLarge):
        await read_form(Receive(body, 100), boundary_of(content_type), LIMITS, None)
    body, content_type = encoded_form([("image", b"x" * 9000)] * 3, {})
    small = FormLimits(max_body_bytes=20_000, max_file_bytes=10_000)
    receive = Receive(body, 1000)
    with pytest.raises(RequestTooLarge):
        await read_form(receive, boundary_of(content_type), small, None)
    assert receive.calls <= 21
