"""The embedded image store over real HTTP (uvicorn on 127.0.0.1): ``url`` answers link to the
gateway itself; the links fetch the image until they expire, and nothing else does."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from fastapi import FastAPI

from mesh_images_asgi import ImagesApp, ImagesMiddleware, Settings
from mesh_images_asgi._access.keys import hash_key, new_key
from mesh_images_asgi._store import embedded as store_embedded
from mesh_images_asgi._store.base import default_store_dir
from mesh_images_asgi._store.embedded import KEY_FILE, SWEEP_BATCH, EmbeddedStore
from mesh_images_asgi._store.factory import create_store
from tests.emulators.openai import OpenAIEmulator
from tests.emulators.vertex import VertexEmulator
from tests.helpers import client_for, decode_image
from tests.support.live import serve

GEN = "/v1/images/generations"
BODY = {"model": "local/sketch", "prompt": "a lighthouse", "size": "64x64", "seed": 7}
TTL = 600


class Clock:
    """The store's clock: a fixed instant plus an offset the test moves (never a sleep)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return 1_000_000.0 + self.offset


def settings(**overrides: Any) -> Settings:
    return Settings(**{"local_latency": 0, "url_ttl": TTL, "store": "embedded", **overrides})


def make_store(directory: Path, clock: Clock, max_bytes: int = 10**9) -> EmbeddedStore:
    return EmbeddedStore.open(directory, max_bytes=max_bytes, clock=clock)


def live(store: EmbeddedStore, **overrides: Any) -> AbstractContextManager[str]:
    return serve(ImagesApp(settings(**overrides), store=store))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> EmbeddedStore:
    return make_store(tmp_path / "images", clock)


@pytest.fixture
def server(store: EmbeddedStore) -> Iterator[str]:
    with live(store) as url:
        yield url


def generate(base_url: str, path: str = GEN, **fields: Any) -> list[dict[str, Any]]:
    response = httpx.post(base_url + path, json={**BODY, **fields}, timeout=30)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def image_files(store: EmbeddedStore) -> list[str]:
    return sorted(name for name in os.listdir(store.directory) if not name.startswith("."))


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()} | changes
    return parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())).geturl()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["x-request-id"].startswith("req_")


def test_a_url_answer_is_a_short_link_to_the_same_image(server: str) -> None:
    (item,) = generate(server)
    url = item["url"]
    assert url.startswith(server + "/v1/images/hosted/")
    assert len(url) < 200
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["cache-control"] == f"public, max-age={TTL}, immutable"
    assert response.headers["etag"].strip('"') in url
    (b64,) = generate(server, response_format="b64_json")
    assert response.content == base64.b64decode(b64["b64_json"])
    assert decode_image(response.content).size == (64, 64)


def test_b64_json_answers_store_nothing(server: str, store: EmbeddedStore) -> None:
    generate(server, response_format="b64_json")
    assert image_files(store) == []


def test_every_image_of_n_gets_its_own_link(server: str) -> None:
    items = generate(server, n=3)
    assert len({item["url"] for item in items}) == 3
    assert all(httpx.get(item["url"]).status_code == 200 for item in items)


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        (lambda url: with_query(url, signature="A" + with_query_sig(url)[1:]), 403, "forbidden"),
        (lambda url: with_query(url, expires=str(int(expires_of(url)) + 3600)), 403, "forbidden"),
        (lambda url: url.split("?")[0] + "?expires=" + expires_of(url), 403, "forbidden"),
        (lambda url: url.replace("/hosted/", "/hosted/0"), 404, "not_found"),
        (lambda url: url.replace(".png?", ".jpeg?"), 403, "forbidden"),
        (lambda url: with_query(url, expires="soon"), 404, "not_found"),
        (lambda url: url.split("?")[0], 404, "not_found"),
    ],
    ids=[
        "signature",
        "later-expiry",
        "no-signature",
        "bad-name",
        "other-ext",
        "bad-expiry",
        "no-query",
    ],
)
def test_a_tampered_url_is_refused(server: str, tamper: Any, status: int, code: str) -> None:
    (item,) = generate(server)
    assert_error(httpx.get(tamper(item["url"])), status, code)
    assert httpx.get(item["url"]).status_code == 200  # the untouched URL still works


def with_query_sig(url: str) -> str:
    return parse_qs(urlsplit(url).query)["signature"][0]


def expires_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["expires"][0]


def test_a_url_expires_after_the_ttl(server: str, clock: Clock) -> None:
    (item,) = generate(server)
    clock.offset = TTL - 1
    response = httpx.get(item["url"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=1, immutable"
    clock.offset = TTL
    assert_error(httpx.get(item["url"]), 410, "url_expired")


def test_range_requests_get_206_and_416(server: str) -> None:
    (item,) = generate(server)
    whole = httpx.get(item["url"]).content
    part = httpx.get(item["url"], headers={"range": "bytes=8-15"})
    assert part.status_code == 206
    assert part.content == whole[8:16]
    assert part.headers["content-range"] == f"bytes 8-15/{len(whole)}"
    assert part.headers["content-length"] == "8"
    beyond = httpx.get(item["url"], headers={"range": f"bytes={len(whole)}-"})
    assert beyond.status_code == 416


def test_head_and_if_none_match(server: str) -> None:
    (item,) = generate(server)
    head = httpx.head(item["url"])
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    again = httpx.get(item["url"], headers={"if-none-match": head.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_a_put_sweeps_expired_files(server: str, store: EmbeddedStore, clock: Clock) -> None:
    first = generate(server, n=2)
    clock.offset = TTL
    (fresh,) = generate(server)
    assert len(image_files(store)) == 1
    assert httpx.get(fresh["url"]).status_code == 200
    assert_error(httpx.get(first[0]["url"]), 410, "url_expired")


@pytest.mark.anyio
async def test_a_sweep_pass_deletes_a_bounded_number_of_files(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock)
    for _ in range(SWEEP_BATCH + 5):
        await store.put(b"x", "image/png", 10, "http://h/")
    clock.offset = 10
    assert await store.sweep() == SWEEP_BATCH
    assert len(image_files(store)) == 5
    assert await store.sweep() == 5
    assert image_files(store) == []
    assert store.bytes == 0


def test_the_disk_cap_deletes_the_oldest_images_first(tmp_path: Path, clock: Clock) -> None:
    probe = make_store(tmp_path / "probe", clock)
    with live(probe) as url:
        sizes = [len(httpx.get(generate(url, prompt=f"p{i}")[0]["url"]).content) for i in range(3)]
    store = make_store(tmp_path / "capped", clock, max_bytes=sizes[1] + sizes[2])
    with live(store) as url:
        oldest, older, newest = (generate(url, prompt=f"p{i}")[0]["url"] for i in range(3))
        assert_error(httpx.get(oldest), 404, "not_found")
        assert httpx.get(older).status_code == 200
        assert httpx.get(newest).status_code == 200
    assert len(image_files(store)) == 2
    assert sum(os.path.getsize(store.directory / name) for name in image_files(store)) <= (
        store.max_bytes
    )


def test_an_image_over_the_cap_is_a_502_not_a_lost_image(tmp_path: Path, clock: Clock) -> None:
    with live(make_store(tmp_path, clock, max_bytes=10)) as url:
        response = httpx.post(url + GEN, json=BODY)
    assert_error(response, 502, "image_store_error")
    assert "MESH_IMAGES_STORE_MAX_BYTES" in response.json()["error"]["message"]


def test_a_failed_write_is_a_502_in_the_envelope_and_in_the_stream(
    store: EmbeddedStore, server: str
) -> None:
    shutil.rmtree(store.directory)  # the disk went away under the running store
    assert_error(httpx.post(server + GEN, json=BODY), 502, "image_store_error")
    stream = httpx.post(server + GEN, json={**BODY, "stream": True})
    events = [line.removeprefix("data: ") for line in stream.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "image_store_error"


def test_the_stream_final_chunk_carries_working_urls(server: str) -> None:
    stream = httpx.post(server + GEN, json={**BODY, "stream": True}, timeout=30)
    events = [line.removeprefix("data: ") for line in stream.text.split("\n\n") if line]
    final = json.loads(events[-2])
    assert final["status"] == "completed"
    (item,) = final["data"]
    assert item["url"].startswith(server + "/v1/images/hosted/")
    assert httpx.get(item["url"]).headers["content-type"] == "image/png"


def test_jpeg_and_webp_keep_their_content_type(server: str) -> None:
    for fmt in ("jpeg", "webp"):
        (item,) = generate(server, output_format=fmt)
        assert httpx.get(item["url"]).headers["content-type"] == f"image/{fmt}"


def test_public_url_is_the_base_of_the_links(store: EmbeddedStore) -> None:
    with live(store, public_url="https://img.example.com/gw/") as url:
        (item,) = generate(url)
        assert item["url"].startswith("https://img.example.com/gw/v1/images/hosted/")
        path = item["url"].removeprefix("https://img.example.com/gw")
        assert httpx.get(url + path).status_code == 200


def test_mounted_in_fastapi_the_urls_carry_the_prefix(store: EmbeddedStore) -> None:
    host = FastAPI()
    host.mount("/images", ImagesApp(settings(), store=store))
    with serve(host) as url:
        (item,) = generate(url, path="/images" + GEN)
        assert item["url"].startswith(url + "/images/v1/images/hosted/")
        assert httpx.get(item["url"]).status_code == 200
        assert httpx.get(item["url"].replace("/images/v1/", "/v1/")).status_code == 404


def test_behind_a_root_path_through_the_middleware(tmp_path: Path) -> None:
    host = FastAPI()
    host.add_middleware(ImagesMiddleware, settings=settings(store_dir=tmp_path))
    with serve(host, root_path="/api") as url:  # behind a proxy that strips /api
        (item,) = generate(url)
        assert item["url"].startswith(url + "/api/v1/images/hosted/")
        assert httpx.get(item["url"].replace("/api/", "/")).status_code == 200
    assert len(os.listdir(tmp_path)) == 2  # the image and the key


def test_the_key_is_made_once_kept_private_and_reused(tmp_path: Path, clock: Clock) -> None:
    first = make_store(tmp_path, clock)
    second = make_store(tmp_path, clock)
    assert first.signature("a.png", 1) == second.signature("a.png", 1)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    keyed = EmbeddedStore.open(tmp_path, key=b"another key", max_bytes=1)
    assert keyed.signature("a.png", 1) != first.signature("a.png", 1)


@pytest.mark.anyio
async def test_a_restart_finds_the_stored_images(tmp_path: Path) -> None:
    clock = Clock()
    before = make_store(tmp_path, clock)
    url = await before.put(b"png bytes", "image/png", 60, "http://h/")
    after = make_store(tmp_path, clock)
    assert (len(after), after.bytes) == (1, len(b"png bytes"))
    name = urlsplit(url).path.rsplit("/", 1)[1]
    query = parse_qs(urlsplit(url).query)
    located = after.locate(name, query["expires"][0], query["signature"][0])
    assert located.path.read_bytes() == b"png bytes"


def test_the_default_store_is_embedded_under_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MESH_IMAGES_STORE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    defaults = Settings()
    assert (defaults.store, defaults.url_ttl) == ("embedded", 3600)
    assert default_store_dir() == tmp_path / "mesh-images" / "images"
    assert isinstance(create_store(defaults), EmbeddedStore)
    assert (tmp_path / "mesh-images" / "images" / KEY_FILE).is_file()
    assert create_store(Settings(store="none")) is None


@pytest.mark.parametrize("value", ["s3:/bucket", "file:///tmp", "ftp://x", "s3://"])
def test_an_unknown_store_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ValueError, match="store"):
        Settings(store=value)


@pytest.mark.parametrize(
    ("model", "fmt"),
    [
        ("openai/gpt-image-2", "image/png"),
        ("vertex/gemini-3.1-flash-image", "image/png"),
    ],
)
def test_every_provider_base64_answer_is_hosted(store: EmbeddedStore, model: str, fmt: str) -> None:
    """gpt-image and Vertex (Gemini) answer base64 only (Vertex even for ``url``): with a
    store, both become links, fetched from the gateway."""
    openai, vertex = OpenAIEmulator(), VertexEmulator(api_key="AQ.emulated-express-key")
    with openai.serve() as openai_url, serve(vertex.app, lifespan="off") as vertex_url:
        upstreams = settings(
            openai_api_key=openai.api_key,
            openai_base_url=openai_url,
            vertex_api_key=vertex.api_key,
            vertex_base_url=vertex_url,
        )
        with serve(ImagesApp(upstreams, store=store)) as url:
            response = httpx.post(url + GEN, json={"model": model, "prompt": "a fox"}, timeout=30)
            assert response.status_code == 200, response.text
            (item,) = response.json()["data"]
            assert item["url"].startswith(url + "/v1/images/hosted/")
            image = httpx.get(item["url"])
    assert image.headers["content-type"] == fmt
    decode_image(image.content)


@pytest.mark.anyio
async def test_the_route_is_documented_and_absent_without_the_embedded_store(
    tmp_path: Path,
) -> None:
    async with client_for(ImagesApp(settings(store_dir=tmp_path), openapi=True)) as client:
        document = (await client.get("/openapi.json")).json()
        missing = await client.get("/v1/images/hosted/" + "0" * 32 + ".png")
    assert "get" in document["paths"]["/v1/images/hosted/{name}"]
    assert missing.json()["error"]["code"] == "not_found"
    async with client_for(ImagesApp(settings(store="none"), openapi=True)) as client:
        document = (await client.get("/openapi.json")).json()
        response = await client.get("/v1/images/hosted/" + "0" * 32 + ".png?expires=1&signature=x")
        (item,) = (await client.post(GEN, json=BODY)).json()["data"]
    assert "/v1/images/hosted/{name}" not in document["paths"]
    assert response.status_code == 404
    assert item["url"].startswith("data:image/png;base64,")


@pytest.mark.anyio
async def test_an_image_being_written_is_not_evicted_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a put that evicted an image still being written unlinked it before its
    rename, which then left it on disk, uncounted, past the cap."""
    started, gate = threading.Event(), threading.Event()
    write = store_embedded._write

    def held(path: Path, data: bytes, doomed: Iterable[Path]) -> None:
        if data == b"first":
            started.set()
            assert gate.wait(10)
        write(path, data, doomed)

    monkeypatch.setattr(store_embedded, "_write", held)
    store = make_store(tmp_path, Clock(), max_bytes=10)
    urls: list[str] = []

    async def put(data: bytes) -> None:
        urls.append(await store.put(data, "image/png", 60, "http://h/"))

    async with anyio.create_task_group() as group:
        group.start_soon(put, b"first")
        assert await anyio.to_thread.run_sync(started.wait, 10)
        await put(b"second!")  # would need the first one's room: it is being written
        gate.set()
    assert len(store) == 2
    assert store.bytes == 12  # past the cap by the write that was in flight
    await put(b"third")  # now the two older ones go
    assert len(image_files(store)) == len(store) == 1
    assert store.bytes == 5


def openai_events(server: str, **fields: Any) -> list[dict[str, Any]]:
    body = {**BODY, "stream": True, **fields}
    headers = {"x-mesh-dialect": "openai"}
    stream = httpx.post(server + GEN, json=body, headers=headers, timeout=30)
    frames = [frame for frame in stream.text.split("\n\n") if frame.startswith("event:")]
    return [json.loads(frame.split("\ndata: ", 1)[1]) for frame in frames]


def test_openai_stream_events_keep_b64_json_unless_url_is_asked(
    server: str, store: EmbeddedStore
) -> None:
    """OpenAI's ``image_generation.completed`` carries ``b64_json``: the openai SDK, which sends
    no ``response_format``, gets it as before and nothing is stored; asked for ``url``, the
    event carries the hosted link."""
    (default,) = openai_events(server)
    assert default["type"] == "image_generation.completed"
    assert decode_image(base64.b64decode(default["b64_json"])).size == (64, 64)
    assert image_files(store) == []
    (hosted,) = openai_events(server, response_format="url")
    assert "b64_json" not in hosted
    assert hosted["url"].startswith(server + "/v1/images/hosted/")
    assert httpx.get(hosted["url"]).status_code == 200


def test_with_gateway_keys_the_signed_url_is_the_only_credential(store: EmbeddedStore) -> None:
    key = new_key()
    with live(store, api_keys=[{"label": "app", "hash": hash_key(key)}]) as url:
        auth = {"authorization": f"Bearer {key}"}
        assert httpx.post(url + GEN, json=BODY).status_code == 401
        response = httpx.post(url + GEN, json=BODY, headers=auth, timeout=30)
        assert response.status_code == 200, response.text
        assert httpx.get(response.json()["data"][0]["url"]).status_code == 200  # no key sent
