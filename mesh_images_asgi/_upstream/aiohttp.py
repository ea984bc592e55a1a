"""The default upstream client: one ``aiohttp.ClientSession`` per app, behind ``transport``.

Chosen over pyreqwest, httpx over httpx-aiohttp and plain httpx by the hostile-upstream suite
(``tests/test_hostile_upstreams.py``) first and speed second (docs/benchmarks.md). What it is set
to do, and what aiohttp gives:

- proxies from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``, as aiohttp's
  ``trust_env`` reads them), HTTPS through a proxy by ``CONNECT``. They are looked up once per
  origin and kept (``_EnvProxies``): ``trust_env`` itself reads the environment and ``~/.netrc``
  on every request, which cost about half the gateway's rate at c=32;
- the system CA store through ``ssl.create_default_context()``, so ``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` apply (OpenSSL reads them); no certifi fallback;
- Happy Eyeballs (RFC 8305, ``aiohappyeyeballs``): an address that never answers costs 250 ms,
  not the connect timeout; ``resolver`` is aiohttp's hook for tests;
- at most 128 header lines of at most 8190 bytes each (aiohttp's parser limits);
- no redirects followed, no cookies kept, no request sent twice (aiohttp retries only idempotent
  methods on a stale connection, and we only POST);
- the body is decoded by ``_upstream/content_coding.py`` (``Accept-Encoding: gzip, deflate``), not
by
  aiohttp, which accepts a gzip stream cut before its end.

aiohttp speaks HTTP/1.1 only; pyreqwest, the candidate with HTTP/2, did not pass the suite
(docs/benchmarks.md).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from mesh_images_asgi._core.errors import GatewayError
from mesh_images_asgi._upstream.client import (
    ChunkedBody,
    UpstreamClient,
    UpstreamResponse,
    bad_response,
    broken_answer,
    certificate_failed,
    refuse_redirect,
    too_slow,
    unreachable,
)
from mesh_images_asgi._upstream.content_coding import ACCEPT_ENCODING, BodyDecoder, DecodingError

__all__ = ["AiohttpUpstream"]


class _AiohttpResponse(ChunkedBody):
    __slots__ = ("_decoder", "_provider", "_response")

    def __init__(self, provider: str, response: aiohttp.ClientResponse, limit: int) -> None:
        super().__init__()
        self._provider = provider
        self._response = response
        try:
            self._decoder = BodyDecoder(response.headers.get("content-encoding"), limit)
        except DecodingError as exc:
            raise bad_response(provider, str(exc)) from None

    @property
    def status_code(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def aread(self) -> bytes:
        length = self._response.content_length
        if self._body is not None or not self._decoder.identity or length is None:
            return await super().aread()
        try:  # the common answer, framed by its length: checked against the cap up front
            self._decoder.reserve(length)
            self._body = await self._response.read()
        except _FAILURES as exc:
            raise _failure(self._provider, exc) from None
        return self._body

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                if decoded := self._decoder.feed(chunk):
                    yield decoded
            self._decoder.finish()
        except _FAILURES as exc:
            raise _failure(self._provider, exc) from None


_FAILURES = (aiohttp.ClientError, OSError, DecodingError)


def _failure(provider: str, exc: BaseException) -> GatewayError:
    """What a failure while reading an answer's body is."""
    if isinstance(exc, DecodingError):
        return bad_response(provider, str(exc))
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return too_slow(provider)
    return broken_answer(provider)


_Proxy = tuple[URL | None, aiohttp.BasicAuth | None]


class _EnvProxies:
    """The proxy the environment names for an origin (aiohttp's own rules), kept per origin."""

    __slots__ = ("_known",)
    _MAX = 64

    def __init__(self) -> None:
        self._known: dict[tuple[str, str | None, int | None], _Proxy] = {}

    def __call__(self, url: URL) -> _Proxy:
        origin = (url.scheme, url.host, url.port)
        proxy = self._known.get(origin)
        if proxy is None:
            try:
                proxy = get_env_proxy_for_url(url)
            except LookupError:
                proxy = (None, None)
            if len(self._known) >= self._MAX:
                self._known.clear()
            self._known[origin] = proxy
        return proxy


class AiohttpUpstream(UpstreamClient):
    """The gateway's own client. ``read_timeout`` (seconds an answer's headers or its next bytes
    may take; None: none) is off in the gateway: routing's deadline bounds every call, and a
    model's catalog deadline may be longer than the default one. ``max_answer_bytes`` caps an
    answer after decoding (``MESH_IMAGES_MAX_UPSTREAM_BYTES``)."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_connections: int,
        max_answer_bytes: int,
        read_timeout: float | None = None,
        keepalive_expiry: float = 30.0,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._options = (connect_timeout, max_connections, read_timeout, keepalive_expiry)
        self._resolver = resolver
        self.max_answer_bytes = max_answer_bytes
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._proxies = _EnvProxies()

    def _open_session(self) -> aiohttp.ClientSession:
        """Made on first use: aiohttp binds a session to the running loop."""
        if self._closed:
            raise GatewayError("The upstream client is closed.")
        if self._session is None:
            connect_timeout, max_connections, read_timeout, keepalive_expiry = self._options
            connector = aiohttp.TCPConnector(
                limit=max_connections,
                keepalive_timeout=keepalive_expiry,
                ssl=ssl.create_default_context(),
                resolver=self._resolver,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"Accept-Encoding": ACCEPT_ENCODING},
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=connect_timeout, sock_read=read_timeout
                ),
            )
        return self._session

    async def _send(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        session = self._open_session()
        target = URL(url)
        proxy, proxy_auth = self._proxies(target)
        try:
            return await session.post(
                target,
                data=content,
                headers=headers,
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            why = getattr(exc.certificate_error, "verify_message", exc.certificate_error)
            raise certificate_failed(provider, why) from None
        except aiohttp.SocketTimeoutError:
            raise too_slow(provider) from None
        except aiohttp.ClientHttpProxyError:
            raise unreachable(provider) from None
        except aiohttp.ClientResponseError:  # a head aiohttp refused; its text quotes the upstream
            raise bad_response(provider, "a malformed or oversized head") from None
        except (aiohttp.ClientError, OSError):  # a connect timeout too, as on a user's httpx client
            raise unreachable(provider) from None

    @asynccontextmanager
    async def post(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[UpstreamResponse]:
        response = await self._send(provider, url, content, headers)
        try:
            refuse_redirect(provider, response.status)
            yield _AiohttpResponse(provider, response, self.max_answer_bytes)
        finally:
            # Back to the pool only when read to its end; otherwise the connection is dropped,
            # which is how an upstream learns nobody waits for its answer any more.
            if response.content.is_eof():
                response.release()
            else:
                response.close()

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
