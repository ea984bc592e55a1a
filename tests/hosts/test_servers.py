"""The same host (the FastAPI example) and the same streaming test under every server we support:
uvicorn with h11 and with httptools, hypercorn, granian."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import httpx
import pytest

from examples import fastapi_app
from tests.hosts.support import ORIGIN, check_stream, image_and_stream, local_env
from tests.support.live import serve, serve_granian, serve_hypercorn

LATENCY, INTERVAL = 0.9, 0.15
ENV = local_env(LATENCY, INTERVAL)


@contextmanager
def uvicorn_h11() -> Iterator[str]:
    with serve(fastapi_app.create_app(), http="h11") as url:
        yield url


@contextmanager
def uvicorn_httptools() -> Iterator[str]:
    with serve(fastapi_app.create_app(), http="httptools") as url:
        yield url


@contextmanager
def hypercorn() -> Iterator[str]:
    with serve_hypercorn(fastapi_app.create_app()) as url:
        yield url


@contextmanager
def granian() -> Iterator[str]:
    with serve_granian("examples.fastapi_app:create_app", env=ENV, factory=True) as url:
        yield url


SERVERS: dict[str, Callable[[], AbstractContextManager[str]]] = {
    "uvicorn-h11": uvicorn_h11,
    "uvicorn-httptools": uvicorn_httptools,
    "hypercorn": hypercorn,
    "granian": granian,
}


@pytest.mark.parametrize("server", SERVERS)
def test_json_and_stream(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():  # the app reads its settings from the environment
        monkeypatch.setenv(name, value)
    with SERVERS[server]() as base_url:
        hello = httpx.get(base_url + "/hello", headers={"authorization": "Bearer demo-token"})
        image, stream = image_and_stream(base_url, headers={"origin": ORIGIN})
    assert hello.json() == {"hello": "demo-user"}
    assert image.headers["access-control-allow-origin"] == ORIGIN
    check_stream(stream, LATENCY, INTERVAL)
