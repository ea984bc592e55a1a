"""A throwaway ``redis-server`` on 127.0.0.1 for tests: started, stopped (even mid-test), gone.

No persistence, a free port, its own process: tests can stop it to see what an outage does.
``shared_url`` prefers the server CI starts (``MESH_IMAGES_TEST_REDIS_URL``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

__all__ = ["RedisServer", "free_port", "redis_for_tests", "require_redis_server", "shared_url"]

BINARY = "redis-server"
SKIP_REASON = "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_redis_server() -> str:
    """The ``redis-server`` binary, or skip the test with the reason."""
    binary = shutil.which(BINARY)
    if binary is None:
        pytest.skip(SKIP_REASON)
    return binary


class RedisServer:
    """One ``redis-server`` process; ``start`` and ``stop`` may be called again and again."""

    def __init__(self, binary: str, port: int | None = None, password: str | None = None) -> None:
        self.binary = binary
        self.port = port if port is not None else free_port()
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
                *(("--requirepass", self.password) if self.password else ()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def shared_url() -> str | None:
    """The Redis CI started for the suite, if any."""
    return os.environ.get("MESH_IMAGES_TEST_REDIS_URL") or None


@contextmanager
def redis_for_tests() -> Iterator[str]:
    """CI's Redis when there is one (``shared_url``), else a ``redis-server`` of the caller's own
    for as long as the block runs; its URL."""
    url = shared_url()
    if url is not None:
        yield url
        return
    server = RedisServer(require_redis_server())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
