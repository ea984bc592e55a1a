"""Hostile uploads to ``POST /v1/images/edits``, against a gateway in its own process (uvicorn), so
that its memory, descriptors and temporary files are its own to measure: each upload gets a clear
4xx, the peak memory stays bounded, and nothing is left behind once it is refused."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.edit_images import png_bomb, solid
from tests.support.live import Process, serve_process
from tests.support.procfs import peak_rss_bytes, rss_bytes

EDITS = "/v1/images/edits"
MIB = 1024 * 1024
PHOTO = solid(64, 64)


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-tmp")


@pytest.fixture(scope="module")
def gateway(tmp_dir: Path) -> Iterator[Process]:
    command = [sys.executable, "-m", "uvicorn", "mesh_images_asgi.main:app", "--port", "{port}"]
    env = {
        "MESH_IMAGES_LOCAL_LATENCY": "0",
        "MESH_IMAGES_BODY_TIMEOUT": "2",
        "TMPDIR": str(tmp_dir),
    }
    with serve_process(command, env=env, name="uvicorn") as server:
        # Warm up (imports, Pillow's plugins) before anything is measured.
        warm = edit(server, [("image", ("a.png", PHOTO, "image/png"))])
        assert warm.status_code == 200, warm.text
        yield server
    assert "Traceback" not in server.stderr, server.stderr


def edit(server: Process, files: list[tuple[str, tuple[str, bytes, str]]]) -> httpx.Response:
    data = {"model": "local/sketch", "prompt": "x", "response_format": "b64_json"}
    return httpx.post(server.url + EDITS, data=data, files=files, timeout=60)


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def assert_refused(response: httpx.Response, status: int, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.get("param") == param
    assert "Traceback" not in error["message"]


def test_a_text_file_named_png_is_400(gateway: Process) -> None:
    response = edit(gateway, [("image", ("photo.png", b"just some text\n" * 100, "image/png"))])
    assert_refused(response, 400, "image")


def test_a_20000_pixel_square_png_bomb_is_refused_without_decoding_it(gateway: Process) -> None:
    bomb = png_bomb(20_000)  # 400 million pixels in ~50 KB: ~400 MB once decoded
    before = peak_rss_bytes(gateway.pid)
    response = edit(gateway, [("image", ("bomb.png", bomb, "image/png"))])
    assert_refused(response, 400, "image")
    assert "pixels" in response.json()["error"]["message"]
    assert peak_rss_bytes(gateway.pid) - before < 32 * MIB


def test_17_images_are_400(gateway: Process) -> None:
    files = [("image[]", (f"{n}.png", PHOTO, "image/png")) for n in range(17)]
    assert_refused(edit(gateway, files), 400, "image")


def test_a_60_mib_file_is_413_and_never_held_whole(gateway: Process) -> None:
    baseline = rss_bytes(gateway.pid)
    before = peak_rss_bytes(gateway.pid)
    upload = httpx.Request(
        "POST",
        gateway.url + EDITS,
        data={"model": "local/sketch", "prompt": "x"},
        files=[("image", ("huge.png", os.urandom(60 * MIB), "image/png"))],
    )
    body = upload.read()
    head = (
        b"POST /v1/images/edits HTTP/1.1\r\nHost: gateway\r\nContent-Type: %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (upload.headers["content-type"].encode(), len(body))
    )
    chunks = (body[at : at + MIB] for at in range(0, len(body), MIB))
    status, answer = _send_while_reading(gateway.url, head, chunks)
    assert status == 413
    assert b'"param": "image"' in answer
    # At most the 50 MiB the file limit lets in (and the parser's slack): the 60 MiB never are.
    assert peak_rss_bytes(gateway.pid) - before < 60 * MIB
    assert rss_bytes(gateway.pid) - baseline < 16 * MIB  # and it is all given back


def _raw_request(url: str, head: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(head)
    return sock


def _status_of(sock: socket.socket) -> int:
    return int(_answer_of(sock).split(b" ", 2)[1])


def _answer_of(sock: socket.socket) -> bytes:
    """What the gateway answered, up to the connection's end (or 64 KiB)."""
    answer = b""
    while len(answer) < 65536:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        answer += chunk
        if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
            break
    return answer


def _send_while_reading(url: str, head: bytes, chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """Send ``head`` and ``chunks`` from a thread while this one reads the answer, so that an
    answer given (and the connection closed) before the body is all sent is still read."""
    sock = _raw_request(url, head)

    def send() -> None:
        with contextlib.suppress(OSError):  # the gateway answered and closed: expected
            for chunk in chunks:
                sock.sendall(chunk)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        answer = _answer_of(sock)
    finally:
        sock.close()
        sender.join(30)
    return int(answer.split(b" ", 2)[1]), answer


HEAD = (
    b"POST /v1/images/edits HTTP/1.1\r\nHost: gateway\r\n"
    b"Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n"
)
PART = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_a_multipart_body_that_never_ends_is_408(gateway: Process) -> None:
    with _raw_request(gateway.url, HEAD + _chunk(PART + b"\x89PNG")) as sock:
        assert _status_of(sock) == 408  # the body deadline (2 s here), whatever the client does


def test_a_multipart_body_that_never_stops_coming_is_413(gateway: Process) -> None:
    before = peak_rss_bytes(gateway.pid)
    block = _chunk(b"\x00" * MIB)
    endless = (block for _ in range(1024))  # 1 GiB, far past every limit
    status, _ = _send_while_reading(gateway.url, HEAD + _chunk(PART), endless)
    assert status == 413
    assert peak_rss_bytes(gateway.pid) - before < 60 * MIB


def test_nothing_is_left_behind(gateway: Process, tmp_dir: Path) -> None:
    fds = descriptors(gateway.pid)
    for files in (
        [("image", ("a.png", b"text", "image/png"))],
        [("image", ("bomb.png", png_bomb(20_000), "image/png"))],
        [("image", ("a.png", PHOTO, "image/png")), ("mask", ("m.png", PHOTO, "image/png"))],
    ):
        assert edit(gateway, files).status_code == 400
    assert list(tmp_dir.iterdir()) == []  # no temporary files, ever
    # The gateway closes its side of each connection soon after the client does: wait for it
    # (the deadline only catches a descriptor that is never closed).
    deadline = time.monotonic() + 10
    while descriptors(gateway.pid) > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert descriptors(gateway.pid) <= fds


def test_a_json_edit_past_the_body_limit_is_413_before_it_is_read(gateway: Process) -> None:
    head = (
        b"POST /v1/images/edits HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (65 * MIB)
    )
    with _raw_request(gateway.url, head + b'{"image": "') as sock:
        assert _status_of(sock) == 413  # from the declared length: nothing more was sent
