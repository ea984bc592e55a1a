"""The upstream HTTP client the providers use: a tiny interface, two implementations.

    UpstreamClient.post(provider, url, content, headers) -> async context of UpstreamResponse
    UpstreamClient.fetch(provider, url, content, headers) -> Answer (the whole body, read)
      ├── Http1Upstream     the default: one ``http1.Http1Pool`` per app (asyncio + httptools)
      └── HttpxUpstream     a user's ``httpx.AsyncClient`` (their transport, proxies, mocks)

Why not httpx everywhere: the upstream client decides the gateway's speed. A bare forwarder runs
several times faster on aiohttp than on httpx's default transport, and more than twice as fast
again on ``http1.py`` than on aiohttp (``performance.md`` in the project's references,
``bench/overhead.py``, docs/benchmarks.md). People who bring their own ``httpx.AsyncClient``
(``ImagesApp(http_client=...)``) still get httpx, and tests use ``httpx.MockTransport`` through
it.

Both implementations raise the gateway's errors, never their library's: a failure before the
answer's headers is ``connection_error``, a broken answer is ``bad_response``, a read timeout is
``gateway_timeout``. Leaving the ``post`` context closes the answer; an unread answer is dropped
with its connection, which is how an upstream learns nobody waits for it any more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import anyio
import httpx

from . import http1
from .errors import GatewayError, GatewayTimeout, UpstreamError

__all__ = [
    "Answer",
    "Http1Upstream",
    "HttpxUpstream",
    "UpstreamClient",
    "UpstreamResponse",
    "as_upstream_client",
    "bad_response",
    "broken_answer",
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
        """POST and read the whole answer (the common case, without a context to enter)."""
        ...

    @property
    def is_closed(self) -> bool: ...

    async def aclose(self) -> None: ...


class _Http1Response:
    __slots__ = ("_body", "_provider", "_response")

    def __init__(self, provider: str, response: http1.Response) -> None:
        self._provider = provider
        self._response = response
        self._body: bytes | None = None

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def aread(self) -> bytes:
        if self._body is not None:
            return self._body
        try:
            self._body = await self._response.read()
        except http1.Http1Error as exc:
            raise _answer_error(self._provider, exc) from None
        return self._body

    async def aiter_lines(self) -> AsyncIterator[str]:
        buffer = bytearray()
        scanned = 0  # bytes of ``buffer`` known to hold no line end
        try:
            async for chunk in self._response.iter_chunks():
                buffer += chunk
                while (end := buffer.find(b"\n", scanned)) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    scanned = 0
                    yield line.decode("utf-8", "replace").removesuffix("\r")
                scanned = len(buffer)
        except http1.Http1Error as exc:
            raise _answer_error(self._provider, exc) from None
        if buffer:
            yield buffer.decode("utf-8", "replace").removesuffix("\r")


def _answer_error(provider: str, exc: http1.Http1Error) -> GatewayError:
    """What a failure while reading an answer is: too slow, or a broken answer."""
    return too_slow(provider) if isinstance(exc, http1.ReadTimeout) else broken_answer(provider)


class Http1Upstream:
    """The default client: ``http1.Http1Pool``, a keep-alive pool on asyncio and httptools.

    ``read_timeout`` (seconds an answer's headers or its next bytes may take; None: none) is
    off in the gateway's own client: routing's deadline bounds every call (``routing.py``), and
    a model's catalog deadline may be longer than the default one.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_connections: int,
        read_timeout: float | None = None,
        keepalive_expiry: float = 30.0,
    ) -> None:
        self.pool = http1.Http1Pool(
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            read_timeout=read_timeout,
        )

    async def _open(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> http1.Response:
        if self.pool.closed:
            raise GatewayError("The upstream client is closed.")
        try:
            return await self.pool.request("POST", url, headers, content)
        except http1.ReadTimeout:
            raise too_slow(provider) from None
        except http1.Http1Error:  # a connect timeout too, as on a user's httpx client
            raise unreachable(provider) from None

    @asynccontextmanager
    async def post(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[UpstreamResponse]:
        response = await self._open(provider, url, content, headers)
        try:
            yield _Http1Response(provider, response)
        finally:
            response.close()

    async def fetch(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> Answer:
        response = await self._open(provider, url, content, headers)
        try:
            body = await _Http1Response(provider, response).aread()
        finally:
            response.close()
        return Answer(response.status_code, response.headers, body)

    @property
    def is_closed(self) -> bool:
        return self.pool.closed

    async def aclose(self) -> None:
        await self.pool.aclose()


class _HttpxResponse:
    def __init__(self, provider: str, response: httpx.Response) -> None:
        self._provider = provider
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def aread(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.TransportError as exc:
            raise _reading_error(self._provider, exc) from None

    async def aiter_lines(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.aiter_lines():
                yield line
        except httpx.TransportError as exc:
            raise _reading_error(self._provider, exc) from None


def _reading_error(provider: str, exc: httpx.TransportError) -> GatewayError:
    # httpx-aiohttp reports a connection dropped mid-answer as ConnectTimeout: a broken answer.
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return too_slow(provider)
    return broken_answer(provider)


class HttpxUpstream:
    """A user's ``httpx.AsyncClient``; closing this wrapper leaves their client open."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

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
        except httpx.TransportError:
            raise unreachable(provider) from None
        try:
            yield _HttpxResponse(provider, response)
        finally:
            with anyio.move_on_after(5, shield=True):
                await response.aclose()

    async def fetch(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> Answer:
        async with self.post(provider, url, content, headers) as response:
            body = await response.aread()
            return Answer(response.status_code, response.headers, body)

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
