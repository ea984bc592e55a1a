"""``http1.py`` (and ``Http1Upstream`` over it) against raw asyncio TCP servers on 127.0.0.1.

The upstream side is written by hand (``serve``) so each test controls the bytes exactly: how an
answer is framed, where TCP writes split it, when the server closes, resets or stalls.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from mesh_images_asgi.errors import GatewayError, GatewayTimeout, UpstreamError
from mesh_images_asgi.http1 import (
    HIGH_WATER,
    BrokenAnswer,
    ConnectFailed,
    ConnectTimeout,
    Headers,
    Http1Error,
    Http1Pool,
    ReadTimeout,
    default_ssl_context,
)
from mesh_images_asgi.transport import Http1Upstream

GatewayErrorT = TypeVar("GatewayErrorT", bound=GatewayError)

# ---------------------------------------------------------------------------------------------
# The upstream side: a raw asyncio server whose handler sees one connection at a time.


@dataclass
class Request:
    """A request as the server received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None

    def count(self, name: str) -> int:
        return sum(1 for key, _ in self.headers if key.lower() == name.lower())


class Conn:
    """One accepted connection."""

    def __init__(
        self, upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.upstream = upstream
        self.reader = reader
        self.writer = writer
        self.requests: list[Request] = []
        self.peer_closed = asyncio.Event()

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.peer_closed.set()
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        request = Request(method, target, version, headers, b"", head)
        length = request.header("content-length")
        if length is not None:
            request.body = await self.reader.readexactly(int(length))
        self.requests.append(request)
        self.upstream.requests.append(request)
        return request

    async def until_peer_closes(self) -> None:
        """Read (and drop) until the client closes its side."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.peer_closed.set()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Conn], Awaitable[None]]


class Upstream:
    """What the server saw: connections, requests, how many connections were open at once."""

    def __init__(self, handler: Handler, scheme: str = "http") -> None:
        self.handler = handler
        self.scheme = scheme
        self.port = 0
        self.conns: list[Conn] = []
        self.requests: list[Request] = []
        self.open_now = 0
        self.max_open = 0
        self.errors: list[BaseException] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn = Conn(self, reader, writer)
        self.conns.append(conn)
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: some tests are about just that
        except asyncio.CancelledError:
            pass  # stopped when the block ends (3.11's start_server logs a cancelled handler)
        except Exception as exc:  # a broken test handler: reported when the block ends
            self.errors.append(exc)
        finally:
            self.open_now -= 1
            writer.transport.abort()


@asynccontextmanager
async def serve(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[Upstream]:
    """A server running ``handler`` per connection; everything is stopped when the block ends."""
    upstream = Upstream(handler, "https" if ssl_context is not None else "http")
    server = await asyncio.start_server(upstream.connected, host, 0, ssl=ssl_context)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()
        for conn in upstream.conns:
            conn.writer.transport.abort()
        for task in upstream.tasks:
            task.cancel()
        await asyncio.gather(*upstream.tasks, return_exceptions=True)
        await server.wait_closed()
    assert not upstream.errors, upstream.errors


def answer(
    body: bytes = b"",
    *,
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
    length: bool = True,
) -> bytes:
    """An HTTP/1.1 answer; with ``length`` a content-length header."""
    lines = [f"HTTP/1.1 {status} Whatever"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def keep_alive(make: Callable[[Request], bytes] | None = None) -> Handler:
    """A handler answering every request on the connection (``ok``, or ``make(request)``)."""

    async def handler(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            await conn.send(answer(b"ok") if make is None else make(request))

    return handler


def reply_and_hold(data: bytes) -> Handler:
    """A handler sending ``data`` (as is) for the first request, then keeping the connection
    open until the client closes it."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(data)
        await conn.until_peer_closes()

    return handler


async def silent(conn: Conn) -> None:
    """Take the request, never answer."""
    await conn.read_request()
    await conn.until_peer_closes()


async def until(predicate: Callable[[], bool], limit: float = 1.0) -> None:
    """Wait until ``predicate()`` holds; AssertionError after ``limit`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.005)


async def closed_by_client(conn: Conn) -> bool:
    """True once the server has seen the client close ``conn`` (within 1 s)."""
    try:
        await asyncio.wait_for(conn.peer_closed.wait(), 1.0)
    except TimeoutError:
        return False
    return True


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def unaccepting_listener() -> Iterator[int]:
    """A port whose accept queue is full, so a new connection attempt hangs (SYNs dropped)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@asynccontextmanager
async def pooled(**options: Any) -> AsyncIterator[Http1Pool]:
    """An ``Http1Pool`` (connect timeout 1 s unless given), closed when the block ends."""
    options.setdefault("connect_timeout", 1.0)
    pool = Http1Pool(**options)
    try:
        yield pool
    finally:
        await pool.aclose()


@asynccontextmanager
async def upstream_client(**options: Any) -> AsyncIterator[Http1Upstream]:
    """An ``Http1Upstream`` (connect timeout 1 s, 4 connections unless given), closed when the
    block ends."""
    options.setdefault("connect_timeout", 1.0)
    options.setdefault("max_connections", 4)
    client = Http1Upstream(**options)
    try:
        yield client
    finally:
        await client.aclose()


async def get(pool: Http1Pool, url: str, body: bytes = b"") -> bytes:
    """POST, read the whole answer, close it."""
    response = await pool.request("POST", url, {}, body)
    try:
        return await response.read()
    finally:
        response.close()


async def read_broken_answer(pool: Http1Pool, url: str) -> None:
    """POST: a 200 answer whose body then raises ``BrokenAnswer``; close it."""
    response = await pool.request("POST", url, {})
    assert response.status_code == 200
    with pytest.raises(BrokenAnswer):
        await response.read()
    response.close()


async def fetch_error(
    client: Http1Upstream, url: str, expected: type[GatewayErrorT]
) -> GatewayErrorT:
    """``fetch`` through ``client``: the ``expected`` error it raises."""
    with pytest.raises(expected) as caught:
        await client.fetch("Test", url, b"{}", {})
    return caught.value


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task``, then see it end with CancelledError."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------------------------------------
# 1. The request as sent, an answer framed by content-length


@pytest.mark.anyio
async def test_content_length_answer_and_the_request_head_as_sent() -> None:
    async with (
        serve(
            keep_alive(lambda _: answer(b"hello world", status=201, headers=[("X-Kind", "a")]))
        ) as up,
        pooled() as pool,
    ):
        response = await pool.request(
            "POST",
            up.url + "/v1/images/generations?model=x&n=2",
            {"Authorization": "Bearer secret-token", "X-Custom": "value 1"},
            b'{"prompt": "cat"}',
        )
        assert response.status_code == 201
        assert response.headers["content-length"] == "11"
        assert response.headers["x-kind"] == "a"
        assert await response.read() == b"hello world"
        response.close()
    [request] = up.requests
    assert request.head.startswith(
        b"POST /v1/images/generations?model=x&n=2 HTTP/1.1\r\n"
        + f"host: 127.0.0.1:{up.port}\r\n".encode()
    )
    assert (request.method, request.target, request.version) == (
        "POST",
        "/v1/images/generations?model=x&n=2",
        "HTTP/1.1",
    )
    assert request.header("host") == f"127.0.0.1:{up.port}"
    assert request.header("Authorization") == "Bearer secret-token"
    assert request.header("x-custom") == "value 1"
    assert request.count("content-length") == 1
    assert request.header("content-length") == str(len(b'{"prompt": "cat"}'))
    assert request.body == b'{"prompt": "cat"}'


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("suffix", "target"),
    [
        ("", "/"),
        ("/", "/"),
        ("?q=1", "/?q=1"),
        ("/a/b?c=d#fragment", "/a/b?c=d"),
        ("/a%20b", "/a%20b"),
    ],
)
async def test_request_target_from_the_url(suffix: str, target: str) -> None:
    async with serve(keep_alive()) as up, pooled() as pool:
        response = await pool.request("GET", up.url + suffix, {})
        assert await response.read() == b"ok"
    [request] = up.requests
    assert (request.method, request.target) == ("GET", target)
    assert request.header("content-length") == "0"
    assert request.body == b""


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x", "127.0.0.1:80/x", "http:///x", "http://user:pw@127.0.0.1/x"],
)
async def test_urls_that_cannot_be_used_raise_value_error(url: str) -> None:
    async with pooled() as pool:
        with pytest.raises(ValueError, match=r"URL|credentials"):
            await pool.request("POST", url, {})
        assert len(pool) == 0


@pytest.mark.anyio
async def test_ipv6_literal_url() -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with serve(keep_alive(), host="::1") as up, pooled() as pool:
        assert await get(pool, f"http://[::1]:{up.port}/six") == b"ok"
    [request] = up.requests
    assert request.target == "/six"
    assert request.header("host") == f"[::1]:{up.port}"


# ---------------------------------------------------------------------------------------------
# 2. Keep-alive


@pytest.mark.anyio
async def test_sequential_requests_reuse_one_connection() -> None:
    def echo(request: Request) -> bytes:
        return answer(b"echo:" + request.body, headers=[("x-n", str(len(up.requests)))])

    async with serve(keep_alive(echo)) as up, pooled() as pool:
        first = await pool.request("POST", up.url + "/a", {}, b"one")
        assert await first.read() == b"echo:one"
        first.close()
        assert len(pool) == 1
        second = await pool.request("POST", up.url + "/b", {}, b"two")
        assert await second.read() == b"echo:two"
        second.close()
        # the second answer's headers are its own, not merged with the first's
        assert second.headers["x-n"] == "2"
        assert first.headers["x-n"] == "1"
        assert len(pool) == 1
    assert len(up.conns) == 1
    assert [r.target for r in up.conns[0].requests] == ["/a", "/b"]


@pytest.mark.anyio
async def test_idle_connection_expires_after_keepalive_expiry() -> None:
    async with serve(keep_alive()) as up, pooled(keepalive_expiry=0.05) as pool:
        assert await get(pool, up.url) == b"ok"
        await asyncio.sleep(0.1)
        assert await get(pool, up.url) == b"ok"
        assert len(up.conns) == 2
        assert await closed_by_client(up.conns[0])
        assert len(pool) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        answer(b"bye", headers=[("connection", "close")]),
        b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nbye",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_answer_that_does_not_keep_alive_is_not_reused(reply: bytes) -> None:
    # the server answers, then leaves its side open
    async with serve(reply_and_hold(reply)) as up, pooled() as pool:
        assert await get(pool, up.url) == b"bye"
        assert await closed_by_client(up.conns[0])
        assert len(pool) == 0
        assert await get(pool, up.url) == b"bye"
        assert len(up.conns) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        answer(b"", status=200),
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
    ],
    ids=["length-0", "204", "304"],
)
async def test_empty_answers_complete_and_keep_the_connection(reply: bytes) -> None:
    async with serve(keep_alive(lambda _: reply)) as up, pooled(read_timeout=1.0) as pool:
        for _ in range(2):
            assert await get(pool, up.url) == b""
        assert len(up.conns) == 1


# ---------------------------------------------------------------------------------------------
# 3, 4. Chunked answers, answers framed by the connection's end


@pytest.mark.anyio
async def test_chunked_answer_is_decoded_and_the_connection_kept() -> None:
    parts = [b"first part, ", b"x" * 70000, b"", b"\r\nthird\r\n", b"end"]

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(CHUNKED_HEAD)
            for part in parts:
                if part:
                    await conn.send(chunk(part))
                    await asyncio.sleep(0.005)
            # a chunk extension and a trailer are part of chunked framing too
            await conn.send(b"3;ext=1\r\nabc\r\n0\r\nx-trailer: t\r\n\r\n")

    async with serve(handler) as up, pooled() as pool:
        for _ in range(2):
            response = await pool.request("POST", up.url, {})
            assert response.headers["transfer-encoding"] == "chunked"
            assert await response.read() == b"".join(parts) + b"abc"
            response.close()
        assert len(up.conns) == 1


@pytest.mark.anyio
async def test_iter_chunks_yields_before_the_answer_ends() -> None:
    got_first = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + chunk(b"early"))
        await asyncio.wait_for(got_first.wait(), 2.0)  # only then the rest
        await conn.send(chunk(b"late") + LAST_CHUNK)
        await conn.until_peer_closes()

    async with serve(handler) as up, pooled() as pool:
        response = await pool.request("POST", up.url, {})
        seen: list[bytes] = []
        async for piece in response.iter_chunks():
            seen.append(piece)
            got_first.set()
        assert seen == [b"early", b"late"]
        response.close()


@pytest.mark.anyio
@pytest.mark.parametrize("close_header", [True, False])
async def test_answer_framed_by_connection_close(close_header: bool) -> None:
    parts = [b"all ", b"of ", b"it " * 20000, b"until the end"]

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
        head += b"connection: close\r\n\r\n" if close_header else b"\r\n"
        await conn.send(head)
        for part in parts:
            await conn.send(part)
            await asyncio.sleep(0.005)
        conn.writer.close()

    async with serve(handler) as up, pooled(read_timeout=1.0) as pool:
        response = await pool.request("POST", up.url, {})
        assert await response.read() == b"".join(parts)
        response.close()
        assert len(pool) == 0
        assert await get(pool, up.url) == b"".join(parts)  # a new connection
        assert len(up.conns) == 2


@pytest.mark.anyio
async def test_reset_connection_does_not_end_a_close_framed_body_as_complete() -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\nonly part of the bo")
        await asyncio.sleep(0.05)
        conn.reset()

    async with serve(handler) as up, pooled(read_timeout=1.0) as pool:
        response = await pool.request("POST", up.url, {})
        with pytest.raises(BrokenAnswer):
            await response.read()
        response.close()


# ---------------------------------------------------------------------------------------------
# 5. Cut short


async def cut_short_by_length(conn: Conn) -> None:
    await conn.read_request()
    await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
    await asyncio.sleep(0.02)
    conn.writer.close()


async def cut_short_in_chunks(conn: Conn) -> None:
    await conn.read_request()
    await conn.send(CHUNKED_HEAD + chunk(b"complete chunk") + b"20\r\nhalf a ch")
    await asyncio.sleep(0.02)
    conn.writer.close()


bad_chunk_framing = reply_and_hold(CHUNKED_HEAD + b"zz-not-hex\r\nabc\r\n")


@pytest.mark.anyio
@pytest.mark.parametrize("handler", [cut_short_by_length, cut_short_in_chunks, bad_chunk_framing])
async def test_cut_short_answer_raises_broken_answer(handler: Handler) -> None:
    async with serve(handler) as up, pooled(read_timeout=1.0) as pool:
        await read_broken_answer(pool, up.url)
        assert len(pool) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("handler", [cut_short_by_length, cut_short_in_chunks, bad_chunk_framing])
async def test_cut_short_answer_through_upstream_is_bad_response(handler: Handler) -> None:
    async with serve(handler) as up, upstream_client(read_timeout=1.0) as client:
        error = await fetch_error(client, up.url + "/v1/x", UpstreamError)
        assert error.provider_code == "bad_response"
        assert len(client.pool) == 0


# ---------------------------------------------------------------------------------------------
# 6, 7, 8. No answer: closed without a byte, refused, not HTTP


async def close_after_request(conn: Conn) -> None:
    await conn.read_request()
    conn.writer.close()


@pytest.mark.anyio
async def test_closed_before_an_answer_is_connect_failed_and_sent_once() -> None:
    async with serve(close_after_request) as up, pooled() as pool:
        with pytest.raises(ConnectFailed):
            await pool.request("POST", up.url, {}, b"body")
        assert len(pool) == 0
    assert len(up.requests) == 1
    assert len(up.conns) == 1


def answer_once_then_close_after_request() -> Handler:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(answer(b"first"))
        await conn.read_request()
        conn.writer.close()

    return handler


@pytest.mark.anyio
async def test_reused_connection_closed_before_an_answer_is_not_retried() -> None:
    async with serve(answer_once_then_close_after_request()) as up, pooled() as pool:
        assert await get(pool, up.url, b"one") == b"first"
        with pytest.raises(ConnectFailed):
            await pool.request("POST", up.url, {}, b"two")
        await asyncio.sleep(0.05)  # a resend, if any, would have come by now
        assert [r.body for r in up.requests] == [b"one", b"two"]
        assert len(up.conns) == 1
        assert len(pool) == 0


@pytest.mark.anyio
async def test_closed_before_an_answer_through_upstream_is_connection_error() -> None:
    async with serve(answer_once_then_close_after_request()) as up, upstream_client() as client:
        answer_ = await client.fetch("Test", up.url, b"one", {})
        assert answer_.content == b"first"
        with pytest.raises(UpstreamError) as caught:
            await client.fetch("Test", up.url, b"two", {})
        assert caught.value.provider_code == "connection_error"
        await asyncio.sleep(0.05)
        assert [r.body for r in up.requests] == [b"one", b"two"]
        assert len(up.conns) == 1


@pytest.mark.anyio
async def test_connection_refused_is_connect_failed() -> None:
    url = f"http://127.0.0.1:{free_port()}/x"
    async with pooled() as pool:
        with pytest.raises(ConnectFailed) as caught:
            await pool.request("POST", url, {})
        assert not isinstance(caught.value, ConnectTimeout)
        assert len(pool) == 0
    async with upstream_client() as client:
        error = await fetch_error(client, url, UpstreamError)
        assert error.provider_code == "connection_error"


@pytest.mark.anyio
async def test_connect_timeout() -> None:
    with unaccepting_listener() as port:
        url = f"http://127.0.0.1:{port}/x"
        loop = asyncio.get_running_loop()
        # a read timeout too: should the kernel accept after all, fail rather than hang
        async with pooled(connect_timeout=0.2, read_timeout=0.5) as pool:
            started = loop.time()
            with pytest.raises(ConnectTimeout):
                await pool.request("POST", url, {})
            assert 0.15 < loop.time() - started < 5.0  # no hang; not a speed check
            assert len(pool) == 0
        async with upstream_client(connect_timeout=0.2, read_timeout=0.5) as client:
            error = await fetch_error(client, url, GatewayError)
            # unreachable, as on a user's httpx client: no answer was awaited yet
            assert isinstance(error, UpstreamError)
            assert error.provider_code == "connection_error"


garbage = reply_and_hold(b"garbage, not HTTP at all\r\n\r\n")


@pytest.mark.anyio
async def test_garbage_instead_of_http_is_an_error() -> None:
    async with serve(garbage) as up:
        async with pooled(read_timeout=1.0) as pool:
            with pytest.raises(Http1Error):
                await pool.request("POST", up.url, {})
            assert len(pool) == 0
            assert await closed_by_client(up.conns[0])
        async with upstream_client(read_timeout=1.0) as client:
            error = await fetch_error(client, up.url, UpstreamError)
            assert error.provider_code in ("connection_error", "bad_response")


@pytest.mark.anyio
async def test_interim_1xx_answer_is_skipped() -> None:
    reply = b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + answer(b"final")
    async with serve(keep_alive(lambda _: reply)) as up, pooled(read_timeout=1.0) as pool:
        response = await pool.request("POST", up.url, {})
        assert response.status_code == 200
        assert await response.read() == b"final"
        response.close()


# ---------------------------------------------------------------------------------------------
# 9. Content encodings

TEXT = b"".join(b"line %d of a compressible body\n" % i for i in range(20000))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("encoding", "encoded"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),
        ("Deflate", zlib.compress(TEXT)),
        ("identity", TEXT),
    ],
)
async def test_encoded_bodies_are_decoded(encoding: str, encoded: bytes) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            head = answer(encoded, headers=[("content-encoding", encoding)])[: -len(encoded)]
            await conn.send(head)
            for start in range(0, len(encoded), 7000):  # the encoded stream in several writes
                await conn.send(encoded[start : start + 7000])

    async with serve(handler) as up, pooled(read_timeout=1.0) as pool:
        for _ in range(2):
            response = await pool.request("POST", up.url, {})
            assert response.headers["content-encoding"] == encoding
            assert await response.read() == TEXT
            response.close()
        assert len(up.conns) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("encoding", "body"),
    [("br", b"\x0b\x02\x80hello\x03"), ("gzip", b"\x1f\x8b\x08\x00 this is not gzip at all")],
    ids=["unsupported", "corrupt"],
)
async def test_unreadable_encodings_raise_broken_answer(encoding: str, body: bytes) -> None:
    reply = answer(body, headers=[("content-encoding", encoding)])
    async with serve(keep_alive(lambda _: reply)) as up:
        async with pooled(read_timeout=1.0) as pool:
            await read_broken_answer(pool, up.url)
        async with upstream_client(read_timeout=1.0) as client:
            error = await fetch_error(client, up.url, UpstreamError)
            assert error.provider_code == "bad_response"


# ---------------------------------------------------------------------------------------------
# 10. Read timeouts


@pytest.mark.anyio
async def test_read_timeout_waiting_for_the_headers() -> None:
    async with serve(silent) as up:
        loop = asyncio.get_running_loop()
        async with pooled(read_timeout=0.2) as pool:
            started = loop.time()
            with pytest.raises(ReadTimeout):
                await pool.request("POST", up.url, {})
            assert 0.15 < loop.time() - started < 5.0  # no hang; not a speed check
            assert len(pool) == 0
            assert await closed_by_client(up.conns[0])
        async with upstream_client(read_timeout=0.2) as client:
            started = loop.time()
            error = await fetch_error(client, up.url, GatewayTimeout)
            assert error.provider_code == "provider_timeout"
            assert loop.time() - started < 5.0  # no hang; not a speed check


stall_mid_body = reply_and_hold(answer(b"0123456789")[:-5])


@pytest.mark.anyio
async def test_read_timeout_waiting_for_the_body() -> None:
    async with serve(stall_mid_body) as up:
        loop = asyncio.get_running_loop()
        async with pooled(read_timeout=0.2) as pool:
            response = await pool.request("POST", up.url, {})
            started = loop.time()
            with pytest.raises(ReadTimeout):
                await response.read()
            assert 0.15 < loop.time() - started < 5.0  # no hang; not a speed check
            response.close()
            assert len(pool) == 0
            assert await closed_by_client(up.conns[0])
        async with upstream_client(read_timeout=0.2) as client:
            error = await fetch_error(client, up.url, GatewayTimeout)
            assert error.provider_code == "provider_timeout"
            async with client.post("Test", up.url, b"{}", {}) as streamed:
                with pytest.raises(GatewayTimeout):
                    async for _ in streamed.aiter_lines():
                        pass


@pytest.mark.anyio
async def test_read_timeout_is_per_wait_not_for_the_whole_body() -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD)
        for piece in (b"a", b"b", b"c", b"d"):
            await asyncio.sleep(0.15)
            await conn.send(chunk(piece))
        await conn.send(LAST_CHUNK)
        await conn.until_peer_closes()

    async with serve(handler) as up, pooled(read_timeout=0.5) as pool:
        assert await get(pool, up.url) == b"abcd"  # 0.6 s in all, never 0.5 s without bytes


# ---------------------------------------------------------------------------------------------
# 11. Cancellation


@pytest.mark.anyio
async def test_cancelled_while_awaiting_the_headers_closes_the_connection() -> None:
    async with serve(silent) as up, pooled() as pool:
        task = asyncio.create_task(pool.request("POST", up.url, {}))
        await until(lambda: len(up.requests) == 1)
        assert len(pool) == 1
        await cancel_and_wait(task)
        assert len(pool) == 0
        assert await closed_by_client(up.conns[0])


@pytest.mark.anyio
async def test_cancelled_while_reading_a_slow_body_closes_the_connection() -> None:
    have_headers = asyncio.Event()

    async def read_all(pool: Http1Pool, url: str) -> bytes:
        response = await pool.request("POST", url, {})
        have_headers.set()
        try:
            return await response.read()
        finally:
            response.close()

    async with serve(stall_mid_body) as up, pooled() as pool:
        task = asyncio.create_task(read_all(pool, up.url))
        await asyncio.wait_for(have_headers.wait(), 1.0)
        await asyncio.sleep(0.02)
        assert not task.done()
        await cancel_and_wait(task)
        assert len(pool) == 0
        assert await closed_by_client(up.conns[0])


@pytest.mark.anyio
async def test_cancelled_while_streaming_lines_through_upstream_closes_the_connection() -> None:
    lines: list[str] = []

    async def stream(client: Http1Upstream, url: str) -> None:
        async with client.post("Test", url, b"{}", {}) as response:
            async for line in response.aiter_lines():
                lines.append(line)

    handler = reply_and_hold(CHUNKED_HEAD + chunk(b"data: one\n\n"))
    async with serve(handler) as up, upstream_client() as client:
        task = asyncio.create_task(stream(client, up.url))
        await until(lambda: len(lines) == 2)
        await cancel_and_wait(task)
        assert lines == ["data: one", ""]
        assert len(client.pool) == 0
        assert await closed_by_client(up.conns[0])


# ---------------------------------------------------------------------------------------------
# 12. The connection limit


@pytest.mark.anyio
async def test_max_connections_one_serves_concurrent_requests_in_turn() -> None:
    async def handler(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            await asyncio.sleep(0.05)
            await conn.send(answer(b"re:" + request.body))

    async with serve(handler) as up, pooled(max_connections=1) as pool:
        results = await asyncio.gather(
            get(pool, up.url, b"a"), get(pool, up.url, b"b"), get(pool, up.url, b"c")
        )
        assert sorted(results) == [b"re:a", b"re:b", b"re:c"]
        assert len(pool) == 1
    assert up.max_open == 1
    assert len(up.conns) == 1
    assert len(up.requests) == 3


@pytest.mark.anyio
async def test_limit_reached_closes_an_idle_connection_to_another_origin() -> None:
    async with (
        serve(keep_alive(lambda _: answer(b"A"))) as a,
        serve(keep_alive(lambda _: answer(b"B"))) as b,
        pooled(max_connections=1) as pool,
    ):
        assert await get(pool, a.url) == b"A"
        assert await asyncio.wait_for(get(pool, b.url), 1.0) == b"B"
        assert await closed_by_client(a.conns[0])
        assert len(pool) == 1


@pytest.mark.anyio
async def test_a_cancelled_waiter_for_a_connection_leaves_the_queue() -> None:
    async with serve(keep_alive()) as up, pooled(max_connections=1) as pool:
        held = await pool.request("POST", up.url, {})
        waiter = asyncio.create_task(get(pool, up.url))
        await asyncio.sleep(0.02)
        assert not waiter.done()
        await cancel_and_wait(waiter)
        assert await held.read() == b"ok"
        held.close()
        assert await asyncio.wait_for(get(pool, up.url), 1.0) == b"ok"
        assert len(up.conns) == 1


@pytest.mark.anyio
async def test_a_woken_then_cancelled_waiter_does_not_strand_the_next() -> None:
    async with serve(keep_alive()) as up, pooled(max_connections=1) as pool:
        held = await pool.request("POST", up.url, {})
        second = asyncio.create_task(get(pool, up.url))
        third = asyncio.create_task(get(pool, up.url))
        await asyncio.sleep(0.02)
        assert not second.done()
        assert not third.done()
        assert await held.read() == b"ok"  # back to the pool: wakes ``second``...
        await cancel_and_wait(second)  # ...which is cancelled before it runs
        assert await asyncio.wait_for(third, 1.0) == b"ok"


# ---------------------------------------------------------------------------------------------
# 13. The server closes an idle connection


@pytest.mark.anyio
async def test_server_closing_an_idle_connection_means_a_new_one_next_time() -> None:
    async def answer_once(conn: Conn) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.send(answer(b"once:" + request.body))
        conn.writer.close()

    async with serve(answer_once) as up, pooled() as pool:
        assert await get(pool, up.url, b"1") == b"once:1"
        await until(lambda: up.open_now == 0)
        await asyncio.sleep(0.05)
        assert len(pool) == 0
        assert await get(pool, up.url, b"2") == b"once:2"
        assert len(up.conns) == 2


# ---------------------------------------------------------------------------------------------
# 14. Flow control, large bodies both ways


@pytest.mark.anyio
async def test_large_body_streams_with_bounded_buffering() -> None:
    body = os.urandom(8 << 20)
    async with serve(reply_and_hold(answer(body))) as up, pooled(read_timeout=2.0) as pool:
        response = await pool.request("POST", up.url, {})
        await asyncio.sleep(0.1)  # nobody reads: the client must stop reading the socket
        assert 0 < response._pending <= HIGH_WATER + (256 << 10)
        digest = hashlib.sha256()
        received = pieces = most_pending = 0
        async for piece in response.iter_chunks():
            digest.update(piece)
            received += len(piece)
            pieces += 1
            most_pending = max(most_pending, response._pending)
            if pieces % 4 == 0:
                await asyncio.sleep(0.002)  # a slow consumer
        response.close()
        assert received == len(body)
        assert digest.digest() == hashlib.sha256(body).digest()
        assert most_pending <= HIGH_WATER + (256 << 10)
        assert len(pool) == 1  # read whole: kept


@pytest.mark.anyio
async def test_large_request_body_is_sent_whole() -> None:
    body = os.urandom(6 << 20)

    def digest(request: Request) -> bytes:
        return answer(hashlib.sha256(request.body).hexdigest().encode())

    async with serve(keep_alive(digest)) as up, pooled(read_timeout=2.0) as pool:
        assert await get(pool, up.url, body) == hashlib.sha256(body).hexdigest().encode()
        assert await get(pool, up.url, b"small") == hashlib.sha256(b"small").hexdigest().encode()
    assert up.requests[0].header("content-length") == str(len(body))
    assert len(up.conns) == 1


# ---------------------------------------------------------------------------------------------
# 15. Http1Upstream: lines, reads


@pytest.mark.anyio
async def test_aiter_lines_splits_on_crlf_and_lf_across_writes() -> None:
    pieces = [
        b"first\r\nsec",  # a line split across writes
        b"ond\n",
        b"\n",  # an empty line
        b"th\xc3",  # a UTF-8 character split across writes
        b"\xa9rd\r",  # CR and LF in different writes
        b"\nlast line without newline",
    ]

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(CHUNKED_HEAD)
            for piece in pieces:
                await conn.send(chunk(piece))
                await asyncio.sleep(0.01)
            await conn.send(LAST_CHUNK)

    async with serve(handler) as up, upstream_client() as client:
        for _ in range(2):
            async with client.post("Test", up.url, b"{}", {}) as response:
                assert response.status_code == 200
                lines = [line async for line in response.aiter_lines()]
            assert lines == ["first", "second", "", "thérd", "last line without newline"]
        assert len(up.conns) == 1  # read whole: the connection was kept


@pytest.mark.anyio
async def test_aiter_lines_of_a_broken_answer_is_bad_response() -> None:
    async with serve(cut_short_by_length) as up, upstream_client(read_timeout=1.0) as client:
        async with client.post("Test", up.url, b"{}", {}) as response:
            with pytest.raises(UpstreamError) as caught:
                async for _ in response.aiter_lines():
                    pass
        assert caught.value.provider_code == "bad_response"


@pytest.mark.anyio
async def test_upstream_fetch_returns_status_headers_and_body() -> None:
    reply = answer(b'{"error": 1}', status=429, headers=[("Retry-After", "3")])
    async with serve(keep_alive(lambda _: reply)) as up, upstream_client() as client:
        result = await client.fetch("Test", up.url + "/v1/x", b'{"a": 1}', {"X-Key": "k"})
        assert result.status_code == 429
        assert not result.is_success
        assert result.headers["retry-after"] == "3"
        assert result.content == b'{"error": 1}'
    [request] = up.requests
    assert (request.method, request.target, request.body) == ("POST", "/v1/x", b'{"a": 1}')
    assert request.header("x-key") == "k"


@pytest.mark.anyio
async def test_upstream_aread_twice_returns_the_body_twice() -> None:
    async with serve(keep_alive(lambda _: answer(b"body"))) as up, upstream_client() as client:
        async with client.post("Test", up.url, b"{}", {}) as response:
            first = await response.aread()
            second = await response.aread()
        assert (first, second) == (b"body", b"body")


# ---------------------------------------------------------------------------------------------
# 16. Response headers


@pytest.mark.anyio
async def test_response_headers_case_insensitive_and_repeats_joined() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Multi: a\r\n"
        b"x-multi: b\r\nX-MULTI: c\r\nSet-Cookie: s=1\r\ncontent-length: 2\r\n\r\nok"
    )

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        # the head split in awkward places: mid-name, mid-value, between CR and LF
        for start in range(0, len(head), 13):
            await conn.send(head[start : start + 13])
            await asyncio.sleep(0.001)
        await conn.until_peer_closes()

    async with serve(handler) as up, pooled(read_timeout=1.0) as pool:
        response = await pool.request("POST", up.url, {})
        headers = response.headers
        assert isinstance(headers, Headers)
        assert headers["content-type"] == "text/plain"
        assert headers["CONTENT-TYPE"] == "text/plain"
        assert headers["x-multi"] == "a, b, c"
        assert headers.get("X-Multi") == "a, b, c"
        assert "set-COOKIE" in headers
        assert "missing" not in headers
        not_a_name: object = 42
        assert not_a_name not in headers
        assert headers.get("missing") is None
        assert headers.get("missing", "default") == "default"
        with pytest.raises(KeyError):
            headers["missing"]
        assert sorted(headers) == [
            "content-length",
            "content-type",
            "set-cookie",
            "x-multi",
        ]
        assert len(headers) == 4
        assert dict(headers)["x-multi"] == "a, b, c"
        assert await response.read() == b"ok"
        response.close()


# ---------------------------------------------------------------------------------------------
# 17. What cannot be sent


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "suffix", "headers"),
    [
        ("POST", "/x", {"x-a": "value\r\nx-injected: 1"}),
        ("POST", "/x", {"x-a": "value\nx-injected: 1"}),
        ("POST", "/x", {"x-a": "nul\0"}),
        ("POST", "/x", {"x-a\r\nx-injected": "1"}),
        ("POST", "/x", {"x-a": "snowman \u2603"}),
        ("POST\r\nX", "/x", {}),
        ("POST", "/x\r\nx-injected: 1", {}),
    ],
    ids=["crlf-value", "lf-value", "nul-value", "crlf-name", "not-latin-1", "method", "target"],
)
async def test_unsendable_request_raises_value_error_and_sends_nothing(
    method: str, suffix: str, headers: dict[str, str]
) -> None:
    async with serve(keep_alive()) as up, pooled() as pool:
        with pytest.raises(ValueError, match=r"CR, LF or NUL|Latin-1"):
            await pool.request(method, up.url + suffix, headers, b"body")
        await asyncio.sleep(0.05)
        assert up.conns == []
        assert len(pool) == 0
        assert await get(pool, up.url + "/ok") == b"ok"  # the pool still works
    assert [r.target for r in up.requests] == ["/ok"]
    assert up.requests[0].header("x-injected") is None


# ---------------------------------------------------------------------------------------------
# 18, 19. Closing


@pytest.mark.anyio
async def test_aclose_closes_kept_connections_and_refuses_new_requests() -> None:
    async with serve(keep_alive()) as up:
        async with pooled() as pool:
            assert await get(pool, up.url) == b"ok"
            assert len(pool) == 1
        assert pool.closed
        assert len(pool) == 0
        assert await closed_by_client(up.conns[0])
        with pytest.raises(ConnectFailed):
            await pool.request("POST", up.url, {})
        assert len(up.conns) == 1

        async with upstream_client() as client:
            assert not client.is_closed
            assert (await client.fetch("Test", up.url, b"{}", {})).content == b"ok"
        assert client.is_closed
        assert await closed_by_client(up.conns[1])
        with pytest.raises(GatewayError):
            await client.fetch("Test", up.url, b"{}", {})
        assert len(up.conns) == 2


@pytest.mark.anyio
async def test_aclose_fails_a_request_awaiting_its_answer_or_a_connection() -> None:
    async with serve(silent) as up:
        async with pooled(max_connections=1) as pool:
            waiting_answer = asyncio.create_task(pool.request("POST", up.url, {}))
            waiting_connection = asyncio.create_task(pool.request("POST", up.url, {}))
            await until(lambda: len(up.requests) == 1)
            await asyncio.sleep(0.01)
        with pytest.raises(ConnectFailed):
            await asyncio.wait_for(waiting_answer, 1.0)
        with pytest.raises(ConnectFailed):
            await asyncio.wait_for(waiting_connection, 1.0)
        assert len(up.conns) == 1


@pytest.mark.anyio
async def test_aclose_fails_a_body_being_read() -> None:
    async with serve(stall_mid_body) as up:
        async with pooled() as pool:
            response = await pool.request("POST", up.url, {})
            reading = asyncio.create_task(response.read())
            await asyncio.sleep(0.02)
        try:
            with pytest.raises(Http1Error):
                await asyncio.wait_for(reading, 1.0)
        finally:
            reading.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize("partly", [False, True])
async def test_closing_an_unread_answer_drops_its_connection(partly: bool) -> None:
    big = b"y" * 300_000

    async with (
        serve(keep_alive(lambda r: answer(big if r.target == "/big" else b"small"))) as up,
        pooled(read_timeout=1.0) as pool,
    ):
        response = await pool.request("POST", up.url + "/big", {})
        if partly:
            async for _ in response.iter_chunks():
                break
        await asyncio.sleep(0.02)
        response.close()
        assert len(pool) == 0
        assert await closed_by_client(up.conns[0])
        assert await get(pool, up.url + "/small") == b"small"
        assert len(up.conns) == 2


@pytest.mark.anyio
async def test_closing_an_answer_whose_body_arrived_but_was_not_taken_drops_it() -> None:
    async with serve(keep_alive(lambda _: answer(b"tiny"))) as up, pooled() as pool:
        response = await pool.request("POST", up.url, {})
        await asyncio.sleep(0.02)  # the whole body is in, nobody took it
        response.close()
        assert len(pool) == 0
        assert await get(pool, up.url) == b"tiny"
        assert len(up.conns) == 2


# ---------------------------------------------------------------------------------------------
# 20. HTTPS


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext
    wrong_name_server: ssl.SSLContext


@pytest.fixture(scope="module")
def tls() -> Tls:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    wrong_name_server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("somewhere-else.example").configure_cert(wrong_name_server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Tls(server, client, wrong_name_server)


@pytest.mark.anyio
async def test_https_with_a_trusted_ca(tls: Tls) -> None:
    def echo(request: Request) -> bytes:
        return answer(b"secure:" + request.body)

    async with (
        serve(keep_alive(echo), ssl_context=tls.server) as up,
        pooled(ssl_context=tls.client) as pool,
    ):
        url = f"https://localhost:{up.port}/x"
        assert await get(pool, url, b"1") == b"secure:1"
        assert await get(pool, url, b"2") == b"secure:2"
        assert await get(pool, f"https://127.0.0.1:{up.port}/x", b"3") == b"secure:3"
    assert up.requests[0].target == "/x"
    assert up.requests[0].header("host") == f"localhost:{up.port}"
    assert up.requests[2].header("host") == f"127.0.0.1:{up.port}"
    assert len(up.conns) == 2  # one per origin, kept alive


@pytest.mark.anyio
async def test_https_large_body_over_tls(tls: Tls) -> None:
    body = os.urandom(3 << 20)
    async with (
        serve(keep_alive(lambda _: answer(body)), ssl_context=tls.server) as up,
        pooled(ssl_context=tls.client, read_timeout=2.0) as pool,
    ):
        got = await get(pool, f"https://localhost:{up.port}/big")
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()


@contextmanager
def server_handshake_failures_expected() -> Iterator[None]:
    """The server's side of a handshake the client refused is reported to the loop's exception
    handler in asyncio's debug mode (``python -X dev``); that report is expected here."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "Error on transport creation for incoming connection":
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


@pytest.mark.anyio
async def test_https_untrusted_certificate_is_connect_failed(tls: Tls) -> None:
    with server_handshake_failures_expected():
        async with serve(keep_alive(), ssl_context=tls.server) as up:
            async with pooled() as pool:  # the system's CA store: does not know the test CA
                with pytest.raises(ConnectFailed):
                    await pool.request("POST", f"https://localhost:{up.port}/x", {})
                assert len(pool) == 0
            await asyncio.sleep(0.05)  # the server's side of the handshake fails too
    assert up.conns == []


@pytest.mark.anyio
async def test_https_wrong_host_name_is_connect_failed(tls: Tls) -> None:
    with server_handshake_failures_expected():
        async with serve(keep_alive(), ssl_context=tls.wrong_name_server) as up:
            async with pooled(ssl_context=tls.client) as pool:
                with pytest.raises(ConnectFailed):
                    await pool.request("POST", f"https://localhost:{up.port}/x", {})
            await asyncio.sleep(0.05)
    assert up.conns == []


def test_the_default_tls_context_falls_back_to_certifi_without_a_system_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def empty_store() -> ssl.SSLContext:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA loaded, as on a slim image

    monkeypatch.setattr(ssl, "create_default_context", empty_store)
    context = default_ssl_context()
    assert context.cert_store_stats()["x509_ca"] > 0
    assert context.verify_mode == ssl.CERT_REQUIRED
