"""The playground page as HTTP: where it is served, its files, its headers (CSP), and that the
page itself holds nothing a strict CSP would block. What it does in a browser:
tests/browser/test_playground_browser.py."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from mesh_images_asgi import ImagesApp, Settings, cli
from mesh_images_asgi._asgi.playground import PAGE_PATHS, PlaygroundApp
from mesh_images_asgi._asgi.server import DrainingServer
from mesh_images_asgi._core.asgi import Message
from mesh_images_asgi.main import create_app
from tests.support.live import serve

FILES = {
    "/": "text/html; charset=utf-8",
    "/playground.js": "text/javascript; charset=utf-8",
    "/playground.css": "text/css; charset=utf-8",
    "/vendor/eventsource-parser.js": "text/javascript; charset=utf-8",
}


def _settings() -> Settings:
    return Settings(local_latency=0)


def _directives(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    parsed = (part.split() for part in policy.split(";") if part.strip())
    return {name: values for name, *values in parsed}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_the_standalone_app_serves_every_file_of_the_page_with_a_strict_csp() -> None:
    assert set(FILES) == set(PAGE_PATHS)
    with serve(create_app(_settings())) as base, httpx.Client(base_url=base) as client:
        answers = {path: client.get(path) for path in FILES}
    for path, content_type in FILES.items():
        response = answers[path]
        assert response.status_code == 200, path
        assert response.headers["content-type"] == content_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-request-id"].startswith("req_")
        csp = _directives(response)
        assert csp["default-src"] == ["'none'"]
        assert csp["script-src"] == ["'self'"]
        assert csp["style-src"] == ["'self'"]
        assert csp["img-src"] == ["'self'", "data:", "blob:"]
        assert csp["connect-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"]
    assert '<meta name="mesh-api-base" content="">' in answers["/"].text
    assert "export {" in answers["/vendor/eventsource-parser.js"].text


def test_the_page_holds_nothing_inline_and_loads_nothing_from_elsewhere() -> None:
    """No inline script or style (the CSP would block them) and no CDN: every script, style and
    module import is a relative URL of the page's own files."""
    with serve(create_app(_settings())) as base, httpx.Client(base_url=base) as client:
        page = client.get("/").text
        scripts = {path: client.get(path).text for path in FILES if path.endswith(".js")}
    tags = _Tags()
    tags.feed(page)
    assert tags.script_text.strip() == ""
    names = {tag for tag, _ in tags.tags}
    assert "style" not in names
    for tag, attrs in tags.tags:
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], tag
    sources = [attrs["src"] for tag, attrs in tags.tags if tag == "script"]
    sheets = [attrs["href"] for tag, attrs in tags.tags if attrs.get("rel") == "stylesheet"]
    assert sources == ["playground.js"]
    assert sheets == ["playground.css"]
    for text in scripts.values():
        for specifier in re.findall(r"^import .* from \"([^\"]+)\";", text, re.MULTILINE):
            assert specifier.startswith("./"), specifier
    assert 'from "./vendor/eventsource-parser.js"' in scripts["/playground.js"]


def test_head_answers_the_headers_without_the_body() -> None:
    with serve(create_app(_settings())) as base, httpx.Client(base_url=base) as client:
        get = client.get("/playground.css")
        head = client.head("/playground.css")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))


def test_a_mounted_images_app_serves_no_page_unless_asked() -> None:
    with serve(ImagesApp(_settings())) as base, httpx.Client(base_url=base) as client:
        page = client.get("/")
        script = client.get("/playground.js")
    for response in (page, script):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_create_app_without_the_playground_serves_no_page() -> None:
    with (
        serve(create_app(_settings(), playground=False)) as base,
        httpx.Client(base_url=base) as client,
    ):
        assert client.get("/").status_code == 404
        assert client.get("/v1/models").status_code == 200


@pytest.mark.parametrize(("argv", "served"), [([], True), (["--no-playground"], False)])
def test_serve_turns_the_playground_off_with_no_playground(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], served: bool
) -> None:
    apps: list[ImagesApp] = []

    def run(server: DrainingServer) -> None:
        apps.append(server.images_app)
        server.started = True

    monkeypatch.setattr(DrainingServer, "run", run)
    monkeypatch.setattr(cli, "_tune_gc", lambda: None)
    assert cli.main(["serve", "--port", "8000", *argv]) == 0
    assert ("/" in apps[0].paths) is served
    assert ("/playground.js" in apps[0].paths) is served


def test_playground_app_mounts_beside_the_images_app_with_its_api_base() -> None:
    host = Starlette(
        routes=[
            Mount("/images", app=ImagesApp(_settings())),
            Mount("/playground", app=PlaygroundApp(api_base="/images")),
        ]
    )
    with serve(host) as base, httpx.Client(base_url=base) as client:
        bare = client.get("/playground")
        page = client.get("/playground/")
        script = client.get("/playground/playground.js")
        post = client.post("/playground/")
        missing = client.get("/playground/nothing.js")
        models = client.get("/images/v1/models")
    assert bare.status_code in (307, 308)
    assert bare.headers["location"].endswith("/playground/")
    assert page.status_code == 200
    assert '<meta name="mesh-api-base" content="/images">' in page.text
    assert script.status_code == 200
    assert post.status_code == 405
    assert post.json()["error"]["code"] == "method_not_allowed"
    assert post.headers["allow"] == "GET, HEAD"
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert models.status_code == 200


@pytest.mark.anyio
async def test_a_mounted_page_asked_without_its_slash_is_redirected_to_it() -> None:
    """Its files are relative URLs: a host that hands over ``path == root_path`` (Starlette
    redirects first; other routers may not) gets ``/playground/``. Scope-level: uvicorn and
    Starlette never produce that scope over HTTP."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/pg", "root_path": "/pg", "headers": []}
    await PlaygroundApp()(scope, receive, send)
    assert sent[0]["status"] == 308
    assert (b"location", b"/pg/") in sent[0]["headers"]


def test_an_api_on_another_origin_is_allowed_by_the_csp_and_escaped_in_the_page() -> None:
    app = PlaygroundApp(api_base='https://images.example.com/v"><b>')
    with serve(app) as base, httpx.Client(base_url=base) as client:
        page = client.get("/")
    csp = _directives(page)
    assert csp["connect-src"] == ["'self'", "https://images.example.com"]
    assert csp["img-src"][-1] == "https://images.example.com"
    assert 'content="https://images.example.com/v&quot;&gt;&lt;b&gt;"' in page.text
    assert "<b>" not in page.text
