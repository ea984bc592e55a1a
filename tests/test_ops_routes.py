"""Operations routes for load balancers and browsers: ``HEAD`` health, ``/readyz``, CORS; and
``GET /v1/models/{id}``."""

from __future__ import annotations

import sys

import httpx
import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._asgi.cors import EXPOSED_HEADERS
from mesh_images_asgi._config import ConfigError
from mesh_images_asgi.main import create_app
from tests.helpers import client_for
from tests.support.live import serve

ORIGIN = "https://app.example"


def test_head_on_health_routes_answers_get_without_a_body() -> None:
    with serve(create_app(Settings(local_latency=0))) as url:
        for path in ("/healthz", "/readyz"):
            get = httpx.get(url + path)
            head = httpx.head(url + path)
            assert (get.status_code, head.status_code) == (200, 200)
            assert head.content == b""
            assert head.headers["content-length"] == str(len(get.content))
            assert head.headers["content-type"] == "application/json"
        refused = httpx.head(url + "/v1/images/generations")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "POST"


@pytest.mark.anyio
async def test_readyz_turns_503_while_draining() -> None:
    app = ImagesApp(Settings(local_latency=0), health=True)
    async with client_for(app) as client:
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        await app.drain(0)
        assert app.draining
        for path in ("/readyz", "/healthz"):
            answer = await client.get(path)
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "provider_not_available"
            assert answer.headers["retry-after"] == "1"


@pytest.mark.anyio
async def test_readyz_is_503_when_the_app_cannot_start() -> None:
    broken = Settings(local_latency=0, models={"local/x": {"provider": "other", "upstream": "x"}})
    app = ImagesApp(broken, health=True)
    async with client_for(app) as client:
        answer = await client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "service_unavailable"


def test_cors_preflight_and_exposed_headers() -> None:
    settings = Settings(local_latency=0, cors_origins=(ORIGIN,))
    with serve(create_app(settings)) as url:
        preflight = httpx.options(
            url + "/v1/images/generations",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        answer = httpx.post(
            url + "/v1/images/generations",
            json={"model": "local/sketch", "prompt": "x", "size": "64x64"},
            headers={"Origin": ORIGIN},
        )
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        exposed = answer.headers["access-control-expose-headers"].split(", ")
        assert {"x-request-id", "x-mesh-cost-usd", "x-ratelimit-remaining-requests"} <= set(exposed)
        assert "x-mesh-cost-usd" in answer.headers
        other = httpx.post(
            url + "/v1/images/generations",
            json={"model": "local/sketch", "prompt": "x", "size": "64x64"},
            headers={"Origin": "https://evil.example"},
        )
        assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_unless_configured() -> None:
    with serve(create_app(Settings(local_latency=0))) as url:
        answer = httpx.get(url + "/healthz", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in answer.headers


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_IMAGES_CORS_ORIGINS", " https://a.example, https://b.example ,")
    assert Settings().cors_origins == ("https://a.example", "https://b.example")
    assert "x-should-retry" in EXPOSED_HEADERS


@pytest.mark.anyio
async def test_model_route_resolves_aliases_and_404s_the_rest() -> None:
    app = ImagesApp(Settings(local_latency=0))
    async with client_for(app) as client:
        model = (await client.get("/v1/models/local/default")).json()
        assert (model["id"], model["object"], model["owned_by"]) == (
            "local/sketch",
            "model",
            "local",
        )
        listed = (await client.get("/v1/models")).json()["data"]
        assert model == next(entry for entry in listed if entry["id"] == "local/sketch")
        for missing in ("local/nope", "vertex/imagen-3", "sketch"):  # vertex: not configured
            answer = await client.get(f"/v1/models/{missing}")
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "model_not_found"
            assert answer.headers["x-should-retry"] == "false"
        mesh = (
            await client.get("/v1/models/local/sketch", headers={"X-MeshAPI-SDK": "python/0"})
        ).json()
        assert mesh["name"] == "local/sketch"
        assert mesh["pricing"] == {"pricing_unit": "per_image", "image_output_usd_per_image": "0"}
        as_list = (await client.get("/v1/models", headers={"X-Mesh-Dialect": "mesh"})).json()
        assert isinstance(as_list, list)
        assert mesh in as_list


def test_cors_without_starlette_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "starlette.middleware.cors", None)  # import fails
    with pytest.raises(ConfigError, match=r"mesh-images-asgi\[server\]"):
        create_app(Settings(cors_origins=(ORIGIN,)))
