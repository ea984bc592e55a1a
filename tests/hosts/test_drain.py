"""SIGTERM on a real ``mesh-images serve``: stop accepting, let running generations finish for
``MESH_IMAGES_DRAIN_TIMEOUT``, then end each stream with its error event and ``[DONE]`` and each
JSON request with 503, and exit.

Before, ``serve`` did not pass the drain timeout to uvicorn, which waited for every request (a
hanging upstream: 300 s), and a cut stream ended with neither an error event nor ``[DONE]``.
The local renderer's simulated latency stands for a slow upstream.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx

from tests.hosts.support import BODY, GEN, local_env
from tests.support.live import Process, serve_process

COMMAND = [sys.executable, "-m", "mesh_images_asgi.cli", "serve", "--port", "{port}"]
Running = tuple[Process, "Future[httpx.Response]", "Future[httpx.Response]"]


def in_flight(url: str) -> float:
    metrics = httpx.get(url + "/metrics", timeout=5).text
    name = "mesh_images_generations_in_flight"
    line = next(x for x in metrics.splitlines() if x.startswith(name))
    return float(line.split()[-1])


def wait_for(check: Callable[[], bool], within: float = 20) -> None:
    """Until ``check()``; the bound only catches a hang."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def accepting(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except OSError:
        return False
    return True


def post(url: str, stream: bool) -> httpx.Response:
    return httpx.post(url + GEN, json={**BODY, "stream": stream}, timeout=60)


@contextmanager
def running(latency: float, drain: float) -> Iterator[Running]:
    """A ``mesh-images serve`` with a JSON request and a stream running in it, SIGTERM sent;
    the block's end waits for the server to exit (serve_process: at most 10 s)."""
    env = {**local_env(latency, 0.2), "MESH_IMAGES_DRAIN_TIMEOUT": str(drain)}
    command = [*COMMAND, "--log-level", "warning"]
    with (
        ThreadPoolExecutor(2) as pool,
        serve_process(command, env=env, name="mesh-images", stop=None) as server,
    ):
        answer, stream = pool.submit(post, server.url, False), pool.submit(post, server.url, True)
        wait_for(lambda: in_flight(server.url) == 2)
        os.kill(server.pid, signal.SIGTERM)
        yield server, answer, stream


def events(response: httpx.Response) -> list[str]:
    lines = response.text.splitlines()
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def test_sigterm_stops_accepting_and_lets_running_generations_finish() -> None:
    with running(latency=3, drain=30) as (server, answer, stream):
        wait_for(lambda: not accepting(server.url))  # while both still run
        assert answer.result().status_code == 200
        final = events(stream.result())
    assert json.loads(final[-2])["status"] == "completed"
    assert final[-1] == "[DONE]"
    assert server.returncode == -signal.SIGTERM, server.stderr  # uvicorn re-raises it


def test_sigterm_cuts_what_outlives_the_drain_timeout_then_exits() -> None:
    with running(latency=120, drain=1) as (server, answer, stream):
        pass
    # Within serve_process's 10 s, not 120 s; ended by the SIGTERM uvicorn re-raises once done.
    assert server.returncode == -signal.SIGTERM, server.stderr
    refused = answer.result()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "provider_not_available"
    assert refused.headers["retry-after"] == "1"
    cut = events(stream.result())
    assert json.loads(cut[0])["status"] == "processing"
    assert json.loads(cut[-2])["error"]["code"] == "provider_not_available"
    assert cut[-1] == "[DONE]"
    assert "Traceback" not in server.stderr
