"""Mount prefixes and ``root_path``, live: our routes and the host's answer in every set-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from examples import fastapi_app
from examples.django_project import asgi as django_asgi
from tests.hosts.support import local_settings, post_image
from tests.support.live import serve, serve_hypercorn

SETTINGS = local_settings(latency=0)
AUTH = {"authorization": "Bearer demo-token"}


@contextmanager
def uvicorn_root_path() -> Iterator[str]:
    """``uvicorn --root-path /api`` behind a proxy that strips ``/api``: uvicorn puts it back
    into ``path`` (``/api/hello``) and sets ``root_path``."""
    with serve(fastapi_app.create_app(SETTINGS), root_path="/api") as url:
        yield url


@contextmanager
def fastapi_root_path() -> Iterator[str]:
    """``FastAPI(root_path="/api")``: ``root_path`` set, ``path`` left without the prefix."""
    app = fastapi_app.create_app(SETTINGS)
    app.root_path = "/api"
    with serve(app) as url:
        yield url


@contextmanager
def starlette_mount() -> Iterator[str]:
    """The whole host under ``Mount("/api")``: ``path`` keeps the prefix, ``root_path`` has it."""
    with serve(Starlette(routes=[Mount("/api", app=fastapi_app.create_app(SETTINGS))])) as url:
        yield url + "/api"


@contextmanager
def stripping_proxy() -> Iterator[str]:
    """A server told the prefix a proxy stripped (hypercorn's ``root_path``): ``root_path`` set,
    ``path`` without it."""
    with serve_hypercorn(fastapi_app.create_app(SETTINGS), root_path="/api") as url:
        yield url


@contextmanager
def django_root_path() -> Iterator[str]:
    with serve(django_asgi.create_application(SETTINGS), root_path="/api") as url:
        yield url


# name: (server, the host's route, what it answers)
CASES: dict[str, tuple[Callable[[], AbstractContextManager[str]], str, object]] = {
    "uvicorn-root-path": (uvicorn_root_path, "/hello", {"hello": "demo-user"}),
    "fastapi-root-path": (fastapi_root_path, "/hello", {"hello": "demo-user"}),
    "starlette-mount": (starlette_mount, "/hello", {"hello": "demo-user"}),
    "stripping-proxy": (stripping_proxy, "/hello", {"hello": "demo-user"}),
    # Django sees the prefix as its SCRIPT_NAME and puts it back into request.path.
    "django-root-path": (
        django_root_path,
        "/hello/",
        {"hello": "from django", "path": "/api/hello/"},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_our_routes_and_the_hosts_answer(case: str) -> None:
    server, hello_path, hello_body = CASES[case]
    with server() as base_url:
        hello = httpx.get(base_url + hello_path, headers=AUTH)
        post_image(base_url)
        models = httpx.get(base_url + "/v1/models")
        elsewhere = httpx.post(base_url + "/v2/images/generations", json={})
    assert hello.status_code == 200
    assert hello.json() == hello_body
    assert models.json()["object"] == "list"
    assert elsewhere.status_code == 404  # another path under the prefix stays the host's
    assert "request_id" not in elsewhere.text
