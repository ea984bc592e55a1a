"""The default upstream client against hostile upstreams: raw TCP and TLS servers on 127.0.0.1
that send what a broken or malicious upstream sends. One test per defect a review found in the
gateway's former home-made client (issue 18), plus proxies and the certificate store."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from aiohttp.abc import AbstractResolver, ResolveResult

from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.errors import GatewayError, UpstreamError
from mesh_images_asgi._routing.router import is_transient
from mesh_images_asgi._upstream.aiohttp import AiohttpUpstream
from mesh_images_asgi._upstream.client import UpstreamClient
from mesh_images_asgi._upstream.default import create_upstream_client
from tests.support.raw import RawServer, raw_server, read_request, wait_closed_by_peer

pytestmark = pytest.mark.anyio

CAP = 2**20
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    """The client an app creates by default, with a 1 MiB answer cap."""
    made = create_upstream_client(Settings(max_upstream_bytes=CAP, connect_timeout=5))
    try:
        yield made
    finally:
        await made.aclose()


def head(status: str = "200 OK", *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode()


def sized(body: bytes, *headers: str) -> bytes:
    return head("200 OK", f"Content-Length: {len(body)}", *headers) + body


async def refused(client: UpstreamClient, url: str) -> UpstreamError:
    with pytest.raises(UpstreamError) as raised:
        await client.fetch("Test", url, b"{}", {})
    return raised.value


async def test_bytes_on_an_idle_connection_never_become_the_next_answer(
    client: UpstreamClient,
) -> None:
    sent_unasked = asyncio.Event()

    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(sized(b'"first"'))
        await writer.drain()
        if server.connections == 1:
            writer.write(sized(b'"unasked"'))  # nobody asked: this must never be an answer
            await writer.drain()
            sent_unasked.set()
        while True:
            await read_request(reader, server)
            writer.write(sized(b'"second"'))

    async with raw_server(handler) as server:
        assert (await client.fetch("Test", server.url(), b"{}", {})).content == b'"first"'
        await sent_unasked.wait()
        await asyncio.sleep(0)  # one loop turn: loopback bytes are already in the client's socket
        answer = await client.fetch("Test", server.url(), b"{}", {})
    assert answer.content in (b'"first"', b'"second"')


async def test_bytes_glued_after_an_answer_are_not_the_next_answer(client: UpstreamClient) -> None:
    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        if server.connections == 1:
            writer.write(sized(b'"first"') + sized(b'"unasked"'))
        else:
            writer.write(sized(b'"fresh"'))
        while True:
            await read_request(reader, server)
            writer.write(sized(b'"fresh"'))

    async with raw_server(handler) as server:
        assert (await client.fetch("Test", server.url(), b"{}", {})).content == b'"first"'
        answer = await client.fetch("Test", server.url(), b"{}", {})
    assert answer.content == b'"fresh"'


@pytest.mark.parametrize(
    "flood",
    [
        [f"X-Flood-{index}: {'a' * 40}" for index in range(20_000)],  # many headers
        [f"X-Same: {'a' * 40}"] * 20_000,  # one header repeated (joined in quadratic time once)
        [f"X-Long: {'a' * 4 * 2**20}"],  # one 4 MiB header
    ],
    ids=["many", "repeated", "long"],
)
async def test_a_header_flood_is_refused(client: UpstreamClient, flood: list[str]) -> None:
    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(head("200 OK", *flood, "Content-Length: 2") + b"{}")
        await writer.drain()

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
    assert error.provider_code == "bad_response"
    assert "a malformed or oversized head" in error.message  # and none of the upstream's bytes


def endless_gzip() -> Iterator[bytes]:
    """A gzip stream that never ends: 1 MiB of zeros per ~1 KiB sent. Once the window holds only
    zeros, the same compressed piece is valid again and again."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    yield compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    piece = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    while True:
        yield piece


async def test_a_gzip_bomb_stops_at_the_cap_while_it_is_read(client: UpstreamClient) -> None:
    # The stream never ends: a client that inflated it all before counting would never return.
    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(head("200 OK", "Content-Encoding: gzip", "Transfer-Encoding: chunked"))
        for piece in endless_gzip():
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0)  # drain() does not yield while the socket takes it all

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
    assert error.provider_code == "bad_response"
    assert "MESH_IMAGES_MAX_UPSTREAM_BYTES" in error.message


async def test_a_small_gzip_bomb_is_refused_past_the_cap(client: UpstreamClient) -> None:
    bomb = gzip.compress(bytes(64 * 2**20))  # 64 KiB that inflate to 64 MiB

    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(sized(bomb, "Content-Encoding: gzip"))
        await writer.drain()

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
    assert "larger than 1048576 bytes" in error.message


async def test_a_length_past_the_cap_is_refused_before_reading(client: UpstreamClient) -> None:
    # The body never comes: a client that read it before checking would wait forever.
    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(head("200 OK", f"Content-Length: {100 * CAP}") + b"{")
        await wait_closed_by_peer(reader, server)

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
        with anyio.fail_after(10):  # only a hang: the connection is dropped, not kept
            await server.closed.wait()
    assert "MESH_IMAGES_MAX_UPSTREAM_BYTES" in error.message


async def test_an_answer_under_the_cap_is_decoded(client: UpstreamClient) -> None:
    body = b'{"data": "' + b"a" * (CAP // 2) + b'"}'

    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(sized(gzip.compress(body), "Content-Encoding: gzip"))
        await writer.drain()

    async with raw_server(handler) as server:
        answer = await client.fetch("Test", server.url(), b"{}", {})
    assert answer.content == body
    accept = [line for line in server.heads[0].split(b"\r\n") if b"accept-encoding" in line.lower()]
    assert accept == [b"Accept-Encoding: gzip, deflate"]  # only what content_coding decodes


@pytest.mark.parametrize("coding", ["chunked", "Chunked", "CHUNKED", "cHuNkEd"])
async def test_a_chunked_body_cut_by_the_connection_end_is_refused(
    client: UpstreamClient, coding: str
) -> None:
    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(head("200 OK", f"Transfer-Encoding: {coding}") + b'7\r\n{"data"\r\n')
        await writer.drain()
        writer.write_eof()

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
    assert error.provider_code == "bad_response"


async def test_a_body_shorter_than_its_length_is_refused(client: UpstreamClient) -> None:
    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(head("200 OK", "Content-Length: 100") + b'{"data": [')
        await writer.drain()
        writer.write_eof()

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
    assert error.provider_code == "bad_response"


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
    ],
)
@pytest.mark.parametrize("cut", [4, 12], ids=["trailer", "data"])
async def test_a_compressed_body_cut_before_its_end_is_refused(
    client: UpstreamClient, coding: str, compress: Any, cut: int
) -> None:
    whole: bytes = compress(b'{"data": [{"b64_json": "' + b"QUJD" * 2000 + b'"}]}')

    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(sized(whole[:-cut], f"Content-Encoding: {coding}"))  # framing intact
        await writer.drain()

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
    assert error.provider_code == "bad_response"
    assert "cut before its end" in error.message


@pytest.mark.parametrize("coding", ["br", "zstd", "x-custom", "gzip, br"])
async def test_an_encoding_we_did_not_ask_for_is_refused(
    client: UpstreamClient, coding: str
) -> None:
    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(sized(b"\x1b\x00\x00garbage", f"Content-Encoding: {coding}"))
        await writer.drain()

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
    assert error.provider_code == "bad_response"
    assert repr(coding) in error.message


@pytest.mark.parametrize("read_first", [True, False], ids=["after-request", "at-once"])
async def test_a_connection_closed_before_any_answer_is_a_connection_error(
    client: UpstreamClient, read_first: bool
) -> None:
    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        if read_first:
            await read_request(reader, server)
        writer.close()

    async with raw_server(handler) as server:
        error = await refused(client, server.url())
    assert error.provider_code == "connection_error"


async def test_a_slow_drip_ends_at_the_deadline_and_drops_the_connection(
    client: UpstreamClient,
) -> None:
    # Every byte arrives in time for a per-read timeout; only the call's deadline ends it.
    dripping = asyncio.Event()

    async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(head("200 OK", "Content-Length: 1000000"))
        drip = asyncio.create_task(wait_closed_by_peer(reader, server))
        try:
            while not server.closed.is_set():
                writer.write(b" ")
                await writer.drain()
                dripping.set()
                await asyncio.sleep(0.01)
        finally:
            drip.cancel()

    async with raw_server(handler) as server:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.5):  # the request's deadline, as routing sets it
                await client.fetch("Test", server.url(), b"{}", {})
        assert dripping.is_set()
        with anyio.fail_after(10):  # only a hang: the upstream sees the call go away
            await server.closed.wait()


@pytest.mark.parametrize("status", ["301 Moved Permanently", "302 Found", "307 Temporary Redirect"])
async def test_a_redirect_is_a_bad_response_and_is_never_followed(
    client: UpstreamClient, status: str
) -> None:
    async def elsewhere_handler(reader: Reader, writer: Writer, server: RawServer) -> None:
        await read_request(reader, server)
        writer.write(sized(b"{}"))

    async with raw_server(elsewhere_handler) as elsewhere:

        async def handler(reader: Reader, writer: Writer, server: RawServer) -> None:
            await read_request(reader, server)
            location = elsewhere.url(host="localhost")
            writer.write(head(status, f"Location: {location}", "Content-Length: 0"))
            await writer.drain()

        async with raw_server(handler) as server:
            error = await refused(client, server.url())
    assert (error.code, error.provider_code) == ("upstream_error", "bad_response")
    assert f"HTTP {status[:3]}" in error.message
    assert elsewhere.connections == 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


async def ok_handler(reader: Reader, writer: Writer, server: RawServer) -> None:
    while True:
        await read_request(reader, server)
        writer.write(sized(b'{"ok": true}'))
        await writer.drain()


async def test_a_certificate_we_do_not_trust_is_refused_and_not_retried(
    client: UpstreamClient, ca: trustme.CA
) -> None:
    async with raw_server(ok_handler, tls=tls_context(ca)) as server:
        error = await refused(client, server.url(scheme="https", host="localhost"))
    assert (error.code, error.provider_code) == ("upstream_error", "certificate_error")
    assert not is_transient(error)  # a connection_error would be retried
    assert server.heads == []


async def test_ssl_cert_file_names_the_trusted_authorities(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    made = create_upstream_client(Settings())
    try:
        async with raw_server(ok_handler, tls=tls_context(ca)) as server:
            url = server.url(scheme="https", host="localhost")
            answer = await made.fetch("Test", url, b"{}", {})
    finally:
        await made.aclose()
    assert answer.content == b'{"ok": true}'


@pytest.fixture
def hashed_cert_dir(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA in a hashed directory, as c_rehash makes one (the openssl command names it)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    command = ["openssl", "x509", "-hash", "-noout", "-in", str(pem)]
    subject_hash = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / f"{subject_hash.strip()}.0").write_bytes(pem.read_bytes())
    return certs


async def test_ssl_cert_dir_names_the_trusted_authorities(
    ca: trustme.CA, hashed_cert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "absent.pem"))  # the directory only
    monkeypatch.setenv("SSL_CERT_DIR", str(hashed_cert_dir))
    made = create_upstream_client(Settings())
    try:
        async with raw_server(ok_handler, tls=tls_context(ca)) as server:
            url = server.url(scheme="https", host="localhost")
            answer = await made.fetch("Test", url, b"{}", {})
    finally:
        await made.aclose()
    assert answer.content == b'{"ok": true}'


class Blackholed:
    """An IPv6 listener on ::1 whose accept queue is full: the kernel drops further SYNs, as a
    blackholed route does, so a connect to it never completes."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET6)
        self.listener.bind(("::1", 0))
        self.listener.listen(0)
        self.port: int = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(3):
            filler = socket.socket(socket.AF_INET6)
            filler.setblocking(False)
            filler.connect_ex(("::1", self.port))
            self.fillers.append(filler)

    def close(self) -> None:
        for sock in [*self.fillers, self.listener]:
            sock.close()


class TwoFamilies(AbstractResolver):
    """A name with a blackholed IPv6 address first and a working IPv4 one second."""

    def __init__(self, v6_port: int, v4_port: int) -> None:
        self.ports = {socket.AF_INET6: v6_port, socket.AF_INET: v4_port}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host=address, port=self.ports[kind], family=kind, proto=0, flags=0
            )
            for address, kind in (("::1", socket.AF_INET6), ("127.0.0.1", socket.AF_INET))
        ]

    async def close(self) -> None:
        return None


async def test_a_blackholed_ipv6_address_falls_back_to_ipv4() -> None:
    # Without Happy Eyeballs the connect would wait on ::1 until the connect timeout (60 s, past
    # the test's own timeout) and fail; with it, 127.0.0.1 answers.
    blackhole = Blackholed()
    try:
        async with raw_server(ok_handler) as server:
            made = AiohttpUpstream(
                connect_timeout=60,
                max_connections=4,
                max_answer_bytes=CAP,
                resolver=TwoFamilies(blackhole.port, server.port),
            )
            try:
                with anyio.fail_after(30):  # only a hang
                    answer = await made.fetch("Test", "http://dual.test/v1/x", b"{}", {})
            finally:
                await made.aclose()
    finally:
        blackhole.close()
    assert answer.content == b'{"ok": true}'


async def test_https_proxy_from_the_environment_carries_the_call(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tunnels: list[bytes] = []

    async def proxy(reader: Reader, writer: Writer, server: RawServer) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        tunnels.append(request.split(b"\r\n")[0])
        host, _, port = request.split(b" ")[1].decode().rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: Reader, sink: Writer) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.write_eof()

        try:
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            upstream_writer.transport.abort()

    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    async with (
        raw_server(ok_handler, tls=tls_context(ca)) as upstream,
        raw_server(proxy) as forward_proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", forward_proxy.url(path=""))
        made = create_upstream_client(Settings())
        try:
            url = upstream.url(scheme="https", host="localhost")
            answer = await made.fetch("Test", url, b"{}", {})
        finally:
            await made.aclose()
    assert answer.content == b'{"ok": true}'
    assert tunnels == [f"CONNECT localhost:{upstream.port} HTTP/1.1".encode()]
    assert len(upstream.heads) == 1  # the request itself, through the tunnel


async def test_no_proxy_names_hosts_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a proxy address where nothing listens
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("NO_PROXY", "localhost")
    made = create_upstream_client(Settings())
    try:
        async with raw_server(ok_handler) as server:
            direct = await made.fetch("Test", server.url(host="localhost"), b"{}", {})
            with pytest.raises(UpstreamError):  # not in NO_PROXY: through the dead proxy
                await made.fetch("Test", server.url(), b"{}", {})
    finally:
        await made.aclose()
    assert direct.content == b'{"ok": true}'
    assert len(server.heads) == 1


async def test_errors_are_gateway_errors(client: UpstreamClient) -> None:
    # A refused connection, for completeness: never the library's exception.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(GatewayError) as raised:
        await client.fetch("Test", f"http://127.0.0.1:{port}/v1/x", b"{}", {})
    assert raised.value.provider_code == "connection_error"
