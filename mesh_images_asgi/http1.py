"""A small HTTP/1.1 client for upstream calls: a keep-alive pool on asyncio, parsed by httptools.

    pool = Http1Pool(connect_timeout=10, max_connections=100)
    response = await pool.request("POST", url, headers, body)   # once the headers are in
    body = await response.read()          # or: async for chunk in response.iter_chunks()
    response.close()                      # keeps the connection when the answer was read whole

Why not aiohttp's client: its request path (request and response objects, multidicts, URL
objects, tracing hooks, timers) is most of what a bare forwarder spends per request here, and a
forwarder on this client runs more than twice as fast (``bench/overhead.py``, the ``forwarder
(http1)`` row of docs/benchmarks.md). The parser is httptools (llhttp, uvicorn's), the
transport and TLS are asyncio's; what is ours is the pool and writing the request head.

What it does: ``http`` and ``https`` URLs (the system's CA store, else certifi's; SNI),
keep-alive with an idle expiry, at most ``max_connections`` connections (callers wait for a free
one), bodies framed by length, by chunks or by the connection's end, ``gzip``/``deflate`` bodies
decoded, interim (1xx) answers skipped, reading paused past ``HIGH_WATER`` bytes nobody has taken
yet. A request is never sent twice: when a kept-alive
connection breaks under it, the caller gets ``ConnectFailed`` (the router decides whether to
retry, and tells so; an image is billed). No proxies, no redirects, no cookies: an upstream API
client needs none of them, and a user who does brings an ``httpx.AsyncClient``
(``ImagesApp(http_client=...)``).

Errors are ``Http1Error``s (``ConnectFailed``, ``ConnectTimeout``, ``ReadTimeout``,
``BrokenAnswer``), and ``ValueError`` for a URL or header that cannot be sent; a cancelled
or failed request closes its connection, so the upstream sees that nobody waits any more.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import certifi
import httptools

from ._cancel import CancelScope

__all__ = [
    "HIGH_WATER",
    "BrokenAnswer",
    "ConnectFailed",
    "ConnectTimeout",
    "Headers",
    "Http1Error",
    "Http1Pool",
    "ReadTimeout",
    "Response",
    "default_ssl_context",
]

HIGH_WATER = 1 << 20
"""Bytes of a body received and not yet taken before the socket stops being read."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Http1Error(Exception):
    """The request failed."""


class ConnectFailed(Http1Error):
    """No connection: refused, unknown host, TLS handshake failed, or closed before an answer."""


class ConnectTimeout(ConnectFailed):
    """No connection within the connect timeout."""


class ReadTimeout(Http1Error):
    """Nothing came for ``read_timeout`` s while an answer was awaited."""


class BrokenAnswer(Http1Error):
    """The answer could not be read: cut short, or not HTTP."""


class Headers(Mapping[str, str]):
    """Response headers, looked up without regard to case; repeated ones joined by ``", "``."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items  # lower-case names

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._items.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class _Origin:
    """Where a URL's requests go, and the parts of its request head that never change."""

    __slots__ = ("host", "key", "port", "prefix", "ssl", "target_host")

    def __init__(self, url: str) -> None:
        _check(url)  # before urlsplit, which would drop CR and LF silently
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if parts.username is not None:
            raise ValueError("credentials in an upstream URL are not supported")
        if not host:
            raise ValueError(f"no host in URL {url!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        port = parts.port or _DEFAULT_PORTS[scheme]
        shown = f"[{host}]" if ":" in host else host
        self.host = host
        self.port = port
        self.ssl = scheme == "https"
        self.target_host = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
        self.key = (scheme, host, port)
        self.prefix = f"{target} HTTP/1.1\r\nhost: {self.target_host}\r\n".encode("latin-1")


def default_ssl_context() -> ssl.SSLContext:
    """The system's CA store (``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` apply), or certifi's
    (httpx's, so always installed) on a slim image that has none."""
    context = ssl.create_default_context()
    if not context.cert_store_stats()["x509_ca"]:
        context.load_verify_locations(certifi.where())
    context.set_alpn_protocols(["http/1.1"])  # said, so no server offers us HTTP/2
    return context


async def _wait(waiter: asyncio.Future[Any], patience: float | None) -> Any:
    """``await waiter``; ``ReadTimeout`` after ``patience`` s (None: never)."""
    if patience is None:
        return await waiter
    with CancelScope(timeout=patience):
        return await waiter
    raise ReadTimeout(f"nothing came for {patience:g} s")


def _check(text: str) -> None:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError("a request line or header may not contain CR, LF or NUL")


def _head(method: str, origin: _Origin, headers: Mapping[str, str], length: int) -> bytes:
    """The request head; ``ValueError`` for a header that would break it."""
    lines = [method.encode("ascii"), b" ", origin.prefix]
    for name, value in headers.items():
        line = f"{name}: {value}\r\n"
        _check(line[:-2])
        try:
            lines.append(line.encode("latin-1"))
        except UnicodeEncodeError:
            raise ValueError(f"header {name!r} is not Latin-1 text") from None
    lines.append(b"content-length: %d\r\n\r\n" % length)
    return b"".join(lines)


class Response:
    """An answer whose headers have arrived; its body is read with ``read`` or ``iter_chunks``.

    ``close()`` when done: a connection whose answer was read whole goes back to the pool, any
    other is closed.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_error",
        "_pending",
        "_waiter",
        "headers",
        "status_code",
    )

    def __init__(self, conn: _Connection, status_code: int, headers: Headers) -> None:
        self._conn: _Connection | None = conn
        self.status_code = status_code
        self.headers = headers
        self._chunks: deque[bytes] = deque()
        self._pending = 0
        self._done = False
        self._error: Http1Error | None = None
        self._waiter: asyncio.Future[None] | None = None
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            self._decoder = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip framing
        else:
            self._decoder = None
            self._error = BrokenAnswer(f"unsupported content-encoding {encoding!r}")

    # fed by the connection

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._pending += len(chunk)
        if self._pending > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self, error: Http1Error | None = None) -> None:
        self._done = True
        if error is not None and self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # read by the caller

    async def read(self) -> bytes:
        """The whole body (decoded); ``BrokenAnswer`` if it cannot be had."""
        parts: list[bytes] = []
        async for chunk in self.iter_chunks():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks (decoded) as they arrive."""
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                chunk = self._chunks.popleft()
                self._pending -= len(chunk)
                if self._pending <= HIGH_WATER // 2 and self._conn is not None:
                    self._conn.resume()
                if self._decoder is not None:
                    chunk = self._decode(chunk)
                if chunk:
                    yield chunk
                continue
            if self._done:
                if self._decoder is not None:
                    tail = self._decoder.flush()
                    self._decoder = None
                    if tail:
                        yield tail
                self._release()
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(self._waiter, None if self._conn is None else self._conn.read_timeout)
            finally:
                self._waiter = None

    def _decode(self, chunk: bytes) -> bytes:
        assert self._decoder is not None
        try:
            return self._decoder.decompress(chunk)
        except zlib.error:
            self._error = BrokenAnswer("the compressed body is corrupt")
            raise self._error from None

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(self)

    def close(self) -> None:
        """Done with the answer: the connection is kept if it was read whole, else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._done and not self._chunks and self._error is None:
                conn.finished(self)
            else:
                conn.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: Http1Pool, origin: _Origin) -> None:
        self._pool = pool
        self.origin = origin
        self.read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._response: Response | None = None
        self._head_waiter: asyncio.Future[Response] | None = None
        self._length_known = False
        self._complete = False
        self._paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._complete_closes = False
        self._interim = False
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BrokenAnswer("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BrokenAnswer(f"not a valid HTTP answer ({exc})"))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._lost(self)
        response = self._response
        if response is not None and not self._complete:
            if self._length_known or exc is not None:  # a reset is no end of a body
                response._finish(BrokenAnswer("the connection closed before the answer ended"))
            else:
                response._finish()  # a body framed by the connection's end
                self._complete = True
        elif self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(ConnectFailed("the connection closed before an answer"))
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(ConnectFailed("the connection closed while sending"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (103 Early Hints): the real one follows
            self._interim = True
            self._headers = {}
            return
        headers = self._headers
        self._length_known = "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", ""
        )
        response = Response(self, status, Headers(headers))
        self._response = response
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        if not self._parser.should_keep_alive():
            self._complete_closes = True
        if self._response is not None:
            self._response._finish()

    # used by the pool and the response

    async def send(self, head: bytes, body: bytes) -> Response:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._headers = {}
        self._response = None
        self._complete = False
        self._complete_closes = False
        self._head_waiter = waiter = loop.create_future()
        if len(body) <= 65536:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        if self._write_paused:
            self._drain_waiter = loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        try:
            response: Response = await _wait(waiter, self.read_timeout)
            return response
        finally:
            self._head_waiter = None

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def finished(self, response: Response) -> None:
        """The answer was read whole: back to the pool if the server keeps the connection."""
        if response is self._response and self._complete and not self._complete_closes:
            self._response = None
            self._pool._release(self)
        else:
            self.abort()

    def abort(self) -> None:
        response, self._response = self._response, None
        if response is not None and not self._complete:  # someone may be reading it
            response._finish(BrokenAnswer("the connection was closed before the answer ended"))
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        self._pool._lost(self)

    def _fail(self, error: Http1Error) -> None:
        response = self._response
        if response is not None:
            response._finish(error)
        elif self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(error)
        self.abort()

    _complete_closes = False


class Http1Pool:
    """Keep-alive connections to any number of origins, at most ``max_connections`` open.

    ``read_timeout``: seconds an answer's headers, or its body's next bytes, may take (None:
    no limit; the gateway bounds each call by its request's deadline instead).
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_connections: int = 100,
        keepalive_expiry: float = 30.0,
        read_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._max = max_connections
        self._keepalive = keepalive_expiry
        self._ssl = ssl_context
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    def __len__(self) -> int:
        """Open connections."""
        return len(self._open)

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Response:
        """Send the request; the response once its headers are in (its body still to read)."""
        origin = self._origins.get(url)
        if origin is None:
            origin = _Origin(url)
            if len(self._origins) > 1024:
                self._origins.clear()
            self._origins[url] = origin
        _check(method)
        head = _head(method, origin, headers, len(body))
        conn = await self._connection(origin)
        try:
            return await conn.send(head, body)
        except BaseException:
            conn.abort()
            raise

    async def _connection(self, origin: _Origin) -> _Connection:
        """A kept-alive connection to ``origin``, else a new one when the limit allows, else
        the first of the two to become possible."""
        while True:
            if self.closed:
                raise ConnectFailed("the client is closed")
            idle = self._idle.get(origin.key)
            if idle:
                now = asyncio.get_running_loop().time()
                while idle:
                    conn = idle.pop()
                    if not conn.closed and now - conn.idle_since < self._keepalive:
                        return conn
                    conn.abort()
            if len(self._open) + self._connecting < self._max or self._close_an_idle():
                return await self._connect(origin)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: the wake-up goes to the next
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.ssl:
            if self._ssl is None:
                self._ssl = default_ssl_context()
            context = self._ssl
        self._connecting += 1
        try:
            with CancelScope(timeout=self._connect_timeout) as scope:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
            if scope.cancelled_caught:
                raise ConnectTimeout(f"no connection within {self._connect_timeout:g} s")
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        finally:
            self._connecting -= 1
            self._wake_one()
        if self.closed:
            conn.abort()
            raise ConnectFailed("the client is closed")
        self._open.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if self.closed or conn.closed:
            conn.abort()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(conn.origin.key, []).append(conn)
        self._wake_one()

    def _lost(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.origin.key)
            if idle is not None and conn in idle:
                idle.remove(conn)
            self._wake_one()

    def _close_an_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                idle.pop(0).abort()
                return True
        return False

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        """Close every connection; requests after this fail with ``ConnectFailed``."""
        self.closed = True
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports finish closing
