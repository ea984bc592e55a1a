"""The upstream HTTP client the providers use: a tiny interface, two implementations.

    UpstreamClient.post(provider, url, content, headers) -> async context of UpstreamResponse
    UpstreamClient.fetch(provider, url, content, headers) -> Answer (the whole body, read)
      ├── AiohttpUpstream   the default: an ``aiohttp.ClientSession`` (_upstream/aiohttp.py)
      └── HttpxUpstream     a user's ``httpx.AsyncClient`` (their transport, proxies, mocks)

Why not httpx by default: the upstream client decides the gateway's speed, and a bare forwarder
runs several times faster on aiohttp than on httpx's default transport (docs/benchmarks.md, where
the candidates are compared). People who bring their own ``httpx.AsyncClient``
(``ImagesApp(http_client=...)``) still get httpx, and tests use ``httpx.MockTransport`` through
it.

Both implementations raise the gateway's errors, never their library's: a failure before the
answer's headers is ``connection_error`` (a certificate that fails verification is
``certificate_error``: not retried), a broken answer is ``bad_response``, a read timeout is
``gateway_timeout``. Both refuse what the gateway never accepts, once, here: a redirect (3xx is
``bad_response`` naming the status; nothing is followed) and an answer larger than its cap after
decoding (``MESH_IMAGES_MAX_UPSTREAM_BYTES``). Leaving the ``post`` context closes the answer; an
unread answer is dropped with its connection, which is how an upstream learns nobody waits for it
any more.
"""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import anyio
import httpx

from mesh_images_asgi._core.errors import GatewayError, GatewayTimeout, UpstreamError
from mesh_images_asgi._upstream.content_coding import (
    DEFAULT_MAX_UPSTREAM_BYTES,
    BodyDecoder,
    DecodingError,
)

__all__ = [
    "DEFAULT_MAX_UPSTREAM_BYTES",
    "Answer",
    "ChunkedBody",
    "HttpxUpstream",
    "UpstreamClient",
    "UpstreamResponse",
    "as_upstream_client",
    "bad_response",
    "broken_answer",
    "certificate_failed",
    "refuse_redirect",
    "split_lines",
    "too_slow",
    "unreachable",
]


def unreachable(provider: str) -> UpstreamError:
    return UpstreamError(f"Could not reach {provider}.", provider_code="connection_error")


def bad_response(provider: str, why: str) -> UpstreamError:
    """502 ``upstream_error``/``bad_response``: an answer we could not read, and ``why``."""
    return UpstreamError(
        f"{provider} sent a response we could not read: {why}.", provider_code="bad_response"
    )


def broken_answer(provider: str) -> UpstreamError:
    return bad_response(provider, "the connection broke while reading the answer")


def certificate_failed(provider: str, why: object) -> UpstreamError:
    """A TLS certificate that failed verification: a configuration problem, never retried."""
    return UpstreamError(
        f"The TLS certificate of {provider} failed verification: {why}.",
        provider_code="certificate_error",
    )


def refuse_redirect(provider: str, status_code: int) -> None:
    """A 3xx is never followed (not to another host, not at all): a ``bad_response``."""
    if 300 <= status_code < 400:
        raise bad_response(provider, f"a redirect (HTTP {status_code}), which is not followed")


async def split_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Decoded body chunks as text lines without their line endings (``\\n`` or ``\\r\\n``)."""
    buffer = bytearray()
    scanned = 0  # bytes of ``buffer`` known to hold no line end
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n", scanned)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            scanned = 0
            yield line.decode("utf-8", "replace").removesuffix("\r")
        scanned = len(buffer)
    if buffer:
        yield buffer.decode("utf-8", "replace").removesuffix("\r")


def too_slow(provider: str) -> GatewayTimeout:
    return GatewayTimeout(f"{provider} did not answer in time.", provider_code="provider_timeout")


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole upstream answer."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class UpstreamResponse(Protocol):
    """An answer whose headers have arrived; its body is read on demand."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""
        ...

    async def aread(self) -> bytes:
        """The whole body (read once, then cached)."""
        ...

    def aiter_lines(self) -> AsyncIterator[str]:
        """The body as text lines without their line endings."""
        ...


class UpstreamClient(Protocol):
    """What providers need from an HTTP client."""

    def post(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """``async with client.post(...) as response``; errors are ``GatewayError``s."""
        ...

    async def fetch(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> Answer:
        """POST and read the whole answer (the common case, without a context to enter). A
        client that subclasses this protocol gets this one."""
        async with self.post(provider, url, content, headers) as response:
            body = await response.aread()
            return Answer(response.status_code, response.headers, body)

    @property
    def is_closed(self) -> bool: ...

    async def aclose(self) -> None: ...


class ChunkedBody(ABC):
    """The body half of an ``UpstreamResponse`` over a library's stream of chunks: ``aread``
    joins them once and keeps the result, ``aiter_lines`` splits them. An adapter gives
    ``_chunks``: decoded, counted against the answer cap, errors as ``GatewayError``s."""

    __slots__ = ("_body",)

    def __init__(self) -> None:
        self._body: bytes | None = None

    async def aread(self) -> bytes:
        if self._body is None:
            self._body = b"".join([chunk async for chunk in self._chunks()])
        return self._body

    def aiter_lines(self) -> AsyncIterator[str]:
        return split_lines(self._chunks())

    @abstractmethod
    def _chunks(self) -> AsyncIterator[bytes]: ...


class _HttpxResponse(ChunkedBody):
    __slots__ = ("_limit", "_provider", "_response")

    def __init__(self, provider: str, response: httpx.Response, limit: int) -> None:
        super().__init__()
        self._provider = provider
        self._response = response
        self._limit = limit

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def _chunks(self) -> AsyncIterator[bytes]:
        """httpx decodes the body; the cap counts what it decoded."""
        counter = BodyDecoder(None, self._limit)
        try:
            async for chunk in self._response.aiter_bytes():
                yield counter.feed(chunk)
        except httpx.TransportError as exc:
            raise _reading_error(self._provider, exc) from None
        except DecodingError as exc:
            raise bad_response(self._provider, str(exc)) from None


def _reading_error(provider: str, exc: httpx.TransportError) -> GatewayError:
    # httpx-aiohttp reports a connection dropped mid-answer as ConnectTimeout: a broken answer.
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return too_slow(provider)
    if isinstance(exc, httpx.DecodingError):
        return bad_response(provider, "a body that does not decode")
    return broken_answer(provider)


def _certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind a library's connection error, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class HttpxUpstream(UpstreamClient):
    """A user's ``httpx.AsyncClient``; closing this wrapper leaves their client open."""

    def __init__(
        self, client: httpx.AsyncClient, max_answer_bytes: int = DEFAULT_MAX_UPSTREAM_BYTES
    ) -> None:
        self.client = client
        self.max_answer_bytes = max_answer_bytes

    @asynccontextmanager
    async def post(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[UpstreamResponse]:
        request = self.client.build_request("POST", url, content=content, headers=headers)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise unreachable(provider) from None
            raise too_slow(provider) from None
        except httpx.TransportError as exc:
            if (failure := _certificate_failure(exc)) is not None:
                raise certificate_failed(provider, failure.verify_message) from None
            raise unreachable(provider) from None
        try:
            refuse_redirect(provider, response.status_code)
            yield _HttpxResponse(provider, response, self.max_answer_bytes)
        finally:
            with anyio.move_on_after(5, shield=True):
                await response.aclose()

    @property
    def is_closed(self) -> bool:
        return self.client.is_closed

    async def aclose(self) -> None:
        return None


def as_upstream_client(client: UpstreamClient | httpx.AsyncClient) -> UpstreamClient:
    """``client`` as an ``UpstreamClient`` (an ``httpx.AsyncClient`` is wrapped)."""
    if isinstance(client, httpx.AsyncClient):
        return HttpxUpstream(client)
    return client
