"""An upstream answer's body, decoded and bounded: the ``Content-Encoding``s we ask for, and a cap.

The default client asks for ``gzip`` and ``deflate`` only (``ACCEPT_ENCODING``) and decodes them
here with the standard library's ``zlib``, because the decoding is where a hostile upstream
attacks (aiohttp's own decoder bounds memory but accepts a gzip stream cut before its end):

- a body in any other coding is refused (``UnknownEncoding``), never handed on undecoded;
- the decoded size is counted while reading, and ``zlib`` never produces more than the bytes left
  under the cap, so a bomb never sits in memory (``AnswerTooLarge``);
- a compressed stream that ends before its end marker (gzip's trailer, zlib's checksum) is a
  truncated answer (``TruncatedEncoding``), as is one with bytes after its end.
"""

from __future__ import annotations

import zlib

from mesh_images_asgi._config import DEFAULT_MAX_UPSTREAM_BYTES

__all__ = [
    "ACCEPT_ENCODING",
    "DEFAULT_MAX_UPSTREAM_BYTES",
    "AnswerTooLarge",
    "BodyDecoder",
    "DecodingError",
    "TruncatedEncoding",
    "UnknownEncoding",
]

ACCEPT_ENCODING = "gzip, deflate"

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class DecodingError(Exception):
    """The answer's body cannot be accepted; ``str()`` says why, for a ``bad_response``."""


class UnknownEncoding(DecodingError):
    pass


class AnswerTooLarge(DecodingError):
    pass


class TruncatedEncoding(DecodingError):
    pass


class BodyDecoder:
    """Feed the body's bytes as they arrive; take the decoded bytes, at most ``limit`` in all."""

    __slots__ = ("_decoder", "_left", "_limit")

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        self._limit = limit
        self._left = limit
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in _WBITS):
            raise UnknownEncoding(f"a body in the encoding {content_encoding!r} we did not ask for")
        self._decoder = zlib.decompressobj(_WBITS[codings[0]]) if codings else None

    @property
    def identity(self) -> bool:
        """The body is not encoded: its bytes are the answer's."""
        return self._decoder is None

    def reserve(self, size: int) -> None:
        """Count ``size`` bytes of an unencoded body read in one piece (not fed)."""
        self._count(size)

    def feed(self, data: bytes) -> bytes:
        if self._decoder is None:
            self._count(len(data))
            return data
        if self._decoder.eof:
            if data:
                raise TruncatedEncoding("bytes after the end of its compressed body")
            return b""
        try:
            # At most one byte past the cap: enough to know it is passed, never a bomb in memory.
            decoded = self._decoder.decompress(data, self._left + 1)
        except zlib.error:
            raise TruncatedEncoding("a corrupt compressed body") from None
        if self._decoder.unused_data:
            raise TruncatedEncoding("bytes after the end of its compressed body")
        self._count(len(decoded))
        return decoded

    def finish(self) -> None:
        """The body ended: it must have ended where its coding says it does."""
        if self._decoder is not None and not self._decoder.eof:
            raise TruncatedEncoding("a compressed body cut before its end")

    def _count(self, size: int) -> None:
        self._left -= size
        if self._left < 0:
            raise AnswerTooLarge(
                f"an answer larger than {self._limit} bytes (MESH_IMAGES_MAX_UPSTREAM_BYTES)"
            )
