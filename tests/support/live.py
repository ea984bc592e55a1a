"""Run an ASGI app on 127.0.0.1 for live tests: uvicorn or hypercorn in a thread, granian in a
subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from mesh_images_asgi._core.asgi import ASGIApp

__all__ = ["Process", "serve", "serve_granian", "serve_hypercorn", "serve_process"]


def _bound_socket() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    return sock, port


@contextmanager
def serve(app: ASGIApp, **config: Any) -> Iterator[str]:
    """Serve ``app`` under uvicorn until the block ends; yields ``http://127.0.0.1:PORT``."""
    sock, port = _bound_socket()
    config.setdefault("log_level", "warning")
    config.setdefault("lifespan", "on")
    server = uvicorn.Server(uvicorn.Config(app, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop within 10 s")


@contextmanager
def serve_hypercorn(app: ASGIApp, **options: Any) -> Iterator[str]:
    """Serve ``app`` under hypercorn until the block ends; yields ``http://127.0.0.1:PORT``.

    ``options`` are set on hypercorn's ``Config`` (for example ``root_path="/api"``).
    """
    import asyncio

    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    sock, port = _bound_socket()
    sock.listen(128)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.loglevel = "WARNING"
    for name, value in options.items():
        setattr(config, name, value)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def main() -> None:
        ready.set()
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    _wait_until_accepting(port, "hypercorn", thread.is_alive)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
        with contextlib.suppress(OSError):  # hypercorn may have closed the descriptor itself
            sock.close()


def _wait_until_accepting(
    port: int, name: str, alive: Callable[[], bool], timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.02)


@dataclass
class Process:
    """A server subprocess: its URL, and once stopped its exit code and standard error."""

    url: str
    returncode: int | None = None
    stderr: str = ""
    pid: int = 0


@contextmanager
def serve_process(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    name: str = "server",
    stop: signal.Signals | None = signal.SIGINT,
) -> Iterator[Process]:
    """Run a server command until the block ends, then stop it with ``stop`` (SIGINT: Ctrl+C;
    None: the block signals ``Process.pid`` itself) and wait for it to exit.

    ``{port}`` in ``command`` is replaced by a free port on 127.0.0.1; ``env`` is added to this
    process's environment. Yields a ``Process`` whose ``returncode`` and ``stderr`` are set on exit.
    """
    sock, port = _bound_socket()
    sock.close()  # the server binds the port itself
    process = subprocess.Popen(
        [part.replace("{port}", str(port)) for part in command],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Process(f"http://127.0.0.1:{port}", pid=process.pid)
    try:
        _wait_until_accepting(port, name, lambda: process.poll() is None, timeout=20)
        yield served
    finally:
        if stop is not None:
            process.send_signal(stop)
        try:
            _, served.stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise RuntimeError(f"{name} did not stop within 10 s") from None
        served.returncode = process.returncode


@contextmanager
def serve_granian(
    target: str, *, env: Mapping[str, str] | None = None, factory: bool = False
) -> Iterator[str]:
    """Serve the ASGI app ``target`` (``module:attr``; a callable returning the app with
    ``factory``) under granian, one worker, until the block ends; yields ``http://127.0.0.1:PORT``.
    """
    command = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
    command += ["--port", "{port}", "--workers", "1", "--log-level", "warning"]
    command += ["--factory", target] if factory else [target]
    with serve_process(command, env=env, name="granian") as served:
        yield served.url
    if served.returncode != 0 or "Traceback" in served.stderr:
        raise RuntimeError(f"granian exited with {served.returncode}:\n{served.stderr}")
