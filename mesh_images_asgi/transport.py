"""The upstream HTTP client the providers use: a tiny interface, two implementations.

    UpstreamClient.post(provider, url, content, headers) -> async context of UpstreamResponse
    UpstreamClient.fetch(provider, url, content, headers) -> Answer (the whole body, read)
      ├── AiohttpUpstream   the default: one ``aiohttp.ClientSession`` per app, straight
      └── HttpxUpstream     a user's ``httpx.AsyncClient`` (their transport, proxies, mocks)

Why not httpx everywhere: on the request path httpx's client layer (request building, URL
merging, cookie extraction, response objects) took about a quarter of the gateway's CPU in a
profile under load, and a bare forwarder runs about twice as fast on aiohttp directly as on httpx's
API over an aiohttp transport, and several times faster than on httpx's default transport
(``bench/overhead.py`` measures the gateway; docs/benchmarks.md). People who bring their own
``httpx.AsyncClient`` (``ImagesApp(http_client=...)``) still get httpx, and tests use
``httpx.MockTransport`` through it.

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

import aiohttp
import anyio
import httpx

from .errors import GatewayError, GatewayTimeout, UpstreamError

__all__ = [
    "AiohttpUpstream",
    "Answer",
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


class _AiohttpResponse:
    def __init__(self, provider: str, response: aiohttp.ClientResponse) -> None:
        self._provider = provider
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def aread(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ServerTimeoutError, TimeoutError):
            raise too_slow(self._provider) from None
        except aiohttp.ClientError:
            raise broken_answer(self._provider) from None

    async def aiter_lines(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.content:
                yield line.decode("utf-8", "replace").rstrip("\r\n")
        except (aiohttp.ServerTimeoutError, TimeoutError):
            raise too_slow(self._provider) from None
        except aiohttp.ClientError:
            raise broken_answer(self._provider) from None


class AiohttpUpstream:
    """The default client: aiohttp, created in the running event loop on first use.

    ``read_timeout`` (seconds between two reads; None: none) is off in the gateway's own client:
    routing's deadline bounds every call (``routing.py``), a model's catalog deadline may be
    longer than the default one, and a per-read timer costs a timer per chunk read.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_connections: int,
        read_timeout: float | None = None,
        keepalive_expiry: float = 30.0,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_expiry
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # one client serves every user: no cookies
                timeout=self._timeout,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _open(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        if self._closed:
            raise GatewayError("The upstream client is closed.")
        try:
            return await self._get_session().post(
                url, data=content, headers=headers, allow_redirects=False
            )
        except (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError, TimeoutError):
            raise too_slow(provider) from None
        except aiohttp.ClientError:
            raise unreachable(provider) from None

    @asynccontextmanager
    async def post(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[UpstreamResponse]:
        response = await self._open(provider, url, content, headers)
        try:
            yield _AiohttpResponse(provider, response)
        finally:
            _done(response)

    async def fetch(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> Answer:
        response = await self._open(provider, url, content, headers)
        try:
            body = await _AiohttpResponse(provider, response).aread()
        finally:
            _done(response)
        return Answer(response.status, response.headers, body)

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _done(response: aiohttp.ClientResponse) -> None:
    if not response.closed and response.content.is_eof():
        response.release()  # fully read: the connection goes back to the pool
    else:
        response.close()  # unread or cut short: drop the connection


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
