"""Each example host, live under uvicorn: the host's route and ours (JSON and stream) side by
side, with the host's own middleware still doing its work."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from examples import fastapi_app, starlette_app
from examples.django_project import asgi as django_asgi
from mesh_images_asgi import Settings
from mesh_images_asgi._core.asgi import ASGIApp
from tests.hosts.support import (
    GEN,
    ORIGIN,
    check_stream,
    image_and_stream,
    local_env,
    local_settings,
    post_image,
)
from tests.support.live import serve, serve_process

LATENCY, INTERVAL = 0.5, 0.1
AUTH = {"authorization": "Bearer demo-token"}


def _fastapi_hello(response: httpx.Response) -> None:
    assert response.json() == {"hello": "demo-user"}


def _starlette_hello(response: httpx.Response) -> None:
    assert response.json()["hello"] == "from starlette"


def _django_hello(response: httpx.Response) -> None:
    assert response.json() == {"hello": "from django", "path": "/hello/"}
    assert response.headers["x-frame-options"] == "DENY"  # Django's middleware ran


@dataclass(frozen=True)
class Host:
    build: Callable[[Settings], ASGIApp]
    prefix: str  # where our routes are
    hello: str  # the host's own route
    check_hello: Callable[[httpx.Response], None]
    cors: bool = True


HOSTS = {
    "fastapi-middleware": Host(fastapi_app.create_app, "", "/hello", _fastapi_hello),
    "fastapi-mount": Host(fastapi_app.create_mounted_app, "", "/hello", _fastapi_hello),
    "starlette-mount": Host(starlette_app.create_app, "/images", "/hello", _starlette_hello),
    "starlette-stacked": Host(starlette_app.create_stacked_app, "", "/hello", _starlette_hello),
    "django": Host(django_asgi.create_application, "", "/hello/", _django_hello, cors=False),
}


@pytest.mark.parametrize("name", HOSTS)
def test_host_route_and_ours_side_by_side(name: str) -> None:
    host = HOSTS[name]
    headers = {"origin": ORIGIN, **AUTH}
    with serve(host.build(local_settings(LATENCY, INTERVAL))) as base_url:
        hello = httpx.get(base_url + host.hello, headers=headers)
        image, stream = image_and_stream(base_url, host.prefix, headers)
        models = httpx.get(base_url + host.prefix + "/v1/models")
    assert hello.status_code == 200
    host.check_hello(hello)
    check_stream(stream, LATENCY, INTERVAL)
    assert models.json()["object"] == "list"
    if host.cors:  # the host's CORS middleware wraps ours
        for response_headers in (hello.headers, image.headers, stream.headers):
            assert response_headers["access-control-allow-origin"] == ORIGIN


def test_fastapi_dependencies_guard_the_host_routes_not_ours() -> None:
    with serve(fastapi_app.create_app(local_settings(0, INTERVAL))) as base_url:
        assert httpx.get(base_url + "/hello").status_code == 401
        post_image(base_url)  # no token: FastAPI dependencies do not run for our route
        preflight = httpx.options(
            base_url + GEN,
            headers={"origin": ORIGIN, "access-control-request-method": "POST"},
        )
    assert preflight.status_code == 200  # answered by the host's CORS middleware
    assert preflight.headers["access-control-allow-origin"] == ORIGIN


def test_starlette_middleware_stack_applies_to_our_routes() -> None:
    with serve(starlette_app.create_stacked_app(local_settings(0, INTERVAL))) as base_url:
        image = post_image(base_url, headers={"accept-encoding": "gzip"})
        wrong_host = httpx.post(base_url + GEN, json={}, headers={"host": "evil.example.net"})
    assert image.headers["content-encoding"] == "gzip"  # GZip compressed our JSON
    assert wrong_host.status_code == 400  # TrustedHost refused it before it reached us
    assert wrong_host.text == "Invalid host header"


def test_django_middleware_does_not_run_for_our_route() -> None:
    with serve(django_asgi.create_application(local_settings(0, INTERVAL))) as base_url:
        image = post_image(base_url)
        missing = httpx.get(base_url + "/nowhere")
    assert "x-frame-options" not in image.headers  # Django's middleware was bypassed
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")  # Django's own 404


def test_standalone_mesh_images_serve() -> None:
    command = [sys.executable, "-m", "mesh_images_asgi.cli", "serve", "--port", "{port}"]
    command += ["--log-level", "warning"]
    with serve_process(command, env=local_env(LATENCY, INTERVAL), name="mesh-images") as server:
        health = httpx.get(server.url + "/healthz")
        _, stream = image_and_stream(server.url)
    assert health.json() == {"status": "ok"}
    check_stream(stream, LATENCY, INTERVAL)
    assert server.returncode == 0, server.stderr
    assert "Unclosed" not in server.stderr
