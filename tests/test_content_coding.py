"""Decoding an upstream body under its cap (``_upstream/content_coding.py``), the cap's default
against the
shipped catalog, and the checks both upstream clients share (a user's httpx client too)."""

from __future__ import annotations

import gzip
import zlib

import httpx
import pytest

from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.errors import UpstreamError
from mesh_images_asgi._domain.catalog import load_catalog, parse_wxh
from mesh_images_asgi._upstream.client import HttpxUpstream
from mesh_images_asgi._upstream.content_coding import (
    DEFAULT_MAX_UPSTREAM_BYTES,
    AnswerTooLarge,
    BodyDecoder,
    TruncatedEncoding,
    UnknownEncoding,
)

BODY = b'{"data": [{"b64_json": "' + b"QUJD" * 5000 + b'"}]}'


def decode(coding: str | None, data: bytes, limit: int = 2**20, piece: int = 100) -> bytes:
    decoder = BodyDecoder(coding, limit)
    out = b"".join(decoder.feed(data[at : at + piece]) for at in range(0, len(data), piece))
    decoder.finish()
    return out


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        (None, BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY)),
        ("GZIP", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("identity, gzip", gzip.compress(BODY)),
    ],
)
def test_the_codings_we_ask_for_decode_in_pieces(coding: str | None, encoded: bytes) -> None:
    assert decode(coding, encoded) == BODY


@pytest.mark.parametrize("coding", [None, "gzip"])
def test_the_cap_counts_decoded_bytes_exactly(coding: str | None) -> None:
    encoded = gzip.compress(BODY) if coding else BODY
    assert decode(coding, encoded, limit=len(BODY)) == BODY
    with pytest.raises(AnswerTooLarge, match="MESH_IMAGES_MAX_UPSTREAM_BYTES"):
        decode(coding, encoded, limit=len(BODY) - 1)


def test_a_bomb_never_inflates_past_the_cap_in_one_feed() -> None:
    decoder = BodyDecoder("gzip", 1000)
    bomb = gzip.compress(bytes(2**26))
    with pytest.raises(AnswerTooLarge):
        decoder.feed(bomb)  # one feed of the whole bomb: zlib stops at 1001 bytes


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, gzip", "gzip, br"])
def test_other_codings_are_refused(coding: str) -> None:
    with pytest.raises(UnknownEncoding, match="did not ask for"):
        BodyDecoder(coding, 100)


@pytest.mark.parametrize(
    "broken",
    [gzip.compress(BODY)[:-1], gzip.compress(BODY)[:30], zlib.compress(BODY)[:-2]],
    ids=["gzip-trailer", "gzip-data", "deflate-checksum"],
)
def test_a_compressed_body_cut_short_is_truncated(broken: bytes) -> None:
    coding = "gzip" if broken[:2] == b"\x1f\x8b" else "deflate"
    with pytest.raises(TruncatedEncoding):
        decode(coding, broken)


@pytest.mark.parametrize(
    "broken",
    [gzip.compress(BODY) + b"more", b"\x1f\x8b" + b"not gzip" * 10],
    ids=["after-end", "corrupt"],
)
def test_bytes_after_the_end_or_corrupt_data_are_refused(broken: bytes) -> None:
    with pytest.raises(TruncatedEncoding):
        decode("gzip", broken, piece=len(broken))


def test_the_default_cap_holds_the_catalogs_largest_answer() -> None:
    # Each image an incompressible RGBA PNG (4 bytes a pixel), base64 (4/3), n at its maximum.
    def largest_pixels(sizes: tuple[str, ...], free_max: int) -> int:
        exact = [w * h for w, h in filter(None, map(parse_wxh, sizes))]
        return max([*exact, free_max])

    largest = max(
        model.max_n
        * largest_pixels(model.sizes, model.free_size.max_pixels if model.free_size else 0)
        * 4
        * 4
        // 3
        for model in load_catalog()
    )
    assert largest <= DEFAULT_MAX_UPSTREAM_BYTES < 2 * largest
    assert Settings().max_upstream_bytes == DEFAULT_MAX_UPSTREAM_BYTES


def test_the_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_IMAGES_MAX_UPSTREAM_BYTES", "1000")
    assert Settings().max_upstream_bytes == 1000


def answering(response: httpx.Response) -> HttpxUpstream:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: response))
    return HttpxUpstream(client, max_answer_bytes=len(BODY))


@pytest.mark.anyio
async def test_a_users_httpx_client_refuses_a_redirect() -> None:
    upstream = answering(httpx.Response(308, headers={"location": "https://elsewhere.test/"}))
    with pytest.raises(UpstreamError) as raised:
        await upstream.fetch("Test", "https://upstream.test/v1/x", b"{}", {})
    assert raised.value.provider_code == "bad_response"
    assert "HTTP 308" in raised.value.message


@pytest.mark.anyio
@pytest.mark.parametrize(("extra", "fits"), [(0, True), (1, False)])
async def test_a_users_httpx_client_counts_decoded_bytes_under_the_cap(
    extra: int, fits: bool
) -> None:
    body = BODY + b" " * extra
    upstream = answering(
        httpx.Response(200, headers={"content-encoding": "gzip"}, content=gzip.compress(body))
    )
    if fits:
        assert (await upstream.fetch("Test", "https://upstream.test/v1/x", b"{}", {})).content
        return
    with pytest.raises(UpstreamError, match="MESH_IMAGES_MAX_UPSTREAM_BYTES"):
        await upstream.fetch("Test", "https://upstream.test/v1/x", b"{}", {})
