"""Prometheus metrics: exact values after a known mix of requests, per-app registries, the
standalone ``/metrics`` route and the host one-liners."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount

from mesh_images_asgi import ImagesApp, ImagesMiddleware, Settings
from mesh_images_asgi._access.keys import hash_key, new_key
from mesh_images_asgi._core.errors import UpstreamError
from mesh_images_asgi._domain.jobs import GenerationJob, ProviderResult
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi._observe.metrics import Metrics
from mesh_images_asgi.main import create_app
from tests.support.leaks import WATCH
from tests.support.ops import Samples, Scripted, ops_app, result, scrape

GEN = "/v1/images/generations"
GPT2 = "openai/gpt-image-2"
GPT15 = "openai/gpt-image-1.5"
LOCAL = "local/sketch"
PRICED = {GPT2: {"price_per_1m_input_tokens": 5.0, "price_per_1m_output_tokens": 40.0}}
USAGE = Usage(prompt_tokens=100, completion_tokens=1000, total_tokens=1100)
PROMPT = "a lighthouse painted by a metrics test"


def overloaded() -> UpstreamError:
    return UpstreamError("overloaded", provider_code="provider_overloaded")


def body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "prompt": PROMPT, "size": "1024x1024", **fields}


def requests(
    route: str = GEN, model: str = "", provider: str = "", **labels: str
) -> dict[str, str]:
    return {"route": route, "model": model, "provider": provider, "stream": "false", **labels}


@pytest.mark.anyio
async def test_exact_counters_after_a_known_mix_of_requests() -> None:
    openai = Scripted(
        overloaded(),  # request 1: retried, then served with token usage
        result(1, USAGE),
        UpstreamError("gone", provider_code="model_not_found"),  # request 2: falls back
    )
    async with ops_app(openai, PRICED) as (_app, client):
        retried = await client.post(GEN, json=body(GPT2))
        fell_back = await client.post(GEN, json=body(GPT2, models=[GPT15]))
        local_one = await client.post(GEN, json=body(LOCAL, size="256x256"))
        local_two = await client.post(GEN, json=body(LOCAL, size="256x256", n=2))
        stream = await client.post(GEN, json=body(LOCAL, size="256x256", stream=True))
        invalid = await client.post(GEN, json=body(LOCAL, prompt=""))
        unknown = await client.post(GEN, json=body("nope/x"))
        models = await client.get("/v1/models")
        no_route = await client.get("/nowhere")
        await client.get("/healthz")
        await client.get("/metrics")  # neither is counted
        samples = await scrape(client)

    statuses = [r.status_code for r in (retried, fell_back, local_one, local_two, stream)]
    assert statuses == [200] * 5
    assert [invalid.status_code, unknown.status_code, models.status_code] == [422, 404, 200]
    assert no_route.status_code == 404
    assert retried.headers["x-mesh-cost-usd"] == "0.0405"  # 100 x $5/1M + 1000 x $40/1M
    assert "x-mesh-cost-usd" not in fell_back.headers  # gpt-image-1.5 has no price
    assert local_one.headers["x-mesh-cost-usd"] == "0"

    count = samples.value
    assert count("mesh_images_requests_total", **requests(GEN, GPT2, "openai", status="200")) == 1
    assert count("mesh_images_requests_total", **requests(GEN, GPT15, "openai", status="200")) == 1
    assert count("mesh_images_requests_total", **requests(GEN, LOCAL, "local", status="200")) == 2
    streamed = requests(GEN, LOCAL, "local", status="200", stream="true")
    assert count("mesh_images_requests_total", **streamed) == 1
    assert count("mesh_images_requests_total", **requests(status="422")) == 1
    assert count("mesh_images_requests_total", **requests(status="404")) == 1
    assert count("mesh_images_requests_total", **requests("/v1/models", status="200")) == 1
    assert count("mesh_images_requests_total", **requests("unmatched", status="404")) == 1
    assert samples.total("mesh_images_requests_total") == 9  # /healthz and /metrics: not counted

    attempts = "mesh_images_upstream_duration_seconds_count"
    assert count(attempts, model=GPT2, provider="openai", outcome="provider_overloaded") == 1
    assert count(attempts, model=GPT2, provider="openai", outcome="model_not_found") == 1
    assert count(attempts, model=GPT2, provider="openai", outcome="ok") == 1
    assert count(attempts, model=GPT15, provider="openai", outcome="ok") == 1
    assert count(attempts, model=LOCAL, provider="local", outcome="ok") == 3
    assert samples.total(attempts) == 7
    assert count("mesh_images_retries_total", model=GPT2) == 1
    assert samples.total("mesh_images_retries_total") == 1
    assert count("mesh_images_fallbacks_total", requested_model=GPT2, model=GPT15) == 1
    assert samples.total("mesh_images_fallbacks_total") == 1

    assert count("mesh_images_images_total", model=GPT2, provider="openai") == 1
    assert count("mesh_images_images_total", model=GPT15, provider="openai") == 1
    assert count("mesh_images_images_total", model=LOCAL, provider="local") == 4
    cost = "mesh_images_cost_usd_total"
    assert count(cost, model=GPT2, provider="openai", billing="gateway") == pytest.approx(0.0405)
    assert count(cost, model=LOCAL, provider="local", billing="gateway") == 0
    assert samples.total(cost, model=GPT15) == 0
    assert (
        count("mesh_images_tokens_total", model=GPT2, provider="openai", direction="input") == 100
    )
    assert (
        count("mesh_images_tokens_total", model=GPT2, provider="openai", direction="output") == 1000
    )

    duration = "mesh_images_request_duration_seconds_count"
    assert count(duration, route=GEN, model=LOCAL, stream="false") == 2
    assert count(duration, route=GEN, model=LOCAL, stream="true") == 1
    assert count(duration, route=GEN, model="", stream="false") == 2
    assert count("mesh_images_gateway_overhead_seconds_count", stream="false") == 4
    assert count("mesh_images_gateway_overhead_seconds_count", stream="true") == 1
    assert count("mesh_images_streams_open") == 0
    assert count("mesh_images_generations_in_flight") == 0
    assert count("mesh_images_circuit_state", model=GPT2, state="closed") == 1
    assert count("mesh_images_circuit_state", model=GPT2, state="open") == 0
    assert count("mesh_images_bulkhead_active", provider="openai") == 0
    assert count("mesh_images_rate_limited_total") == 0

    # Bounded labels: no prompt, no unknown model name, no request id.
    assert PROMPT not in samples.text
    assert "nope/x" not in samples.text
    assert retried.headers["x-request-id"] not in samples.text


@pytest.mark.anyio
async def test_a_stream_counts_as_open_while_it_runs_and_counts_every_ping_it_wrote() -> None:
    release = anyio.Event()
    called = anyio.Event()

    async def slow(job: GenerationJob) -> ProviderResult:
        called.set()
        await release.wait()
        return result(1)

    responses: list[httpx.Response] = []
    async with ops_app(Scripted(slow), keepalive_interval=0.01) as (app, client):

        async def stream() -> None:
            responses.append(await client.post(GEN, json=body(GPT2, stream=True)))

        async with anyio.create_task_group() as group:
            group.start_soon(stream)
            await called.wait()
            registry = app.metrics.registry
            assert registry.get_sample_value("mesh_images_streams_open") == 1
            assert registry.get_sample_value("mesh_images_generations_in_flight") == 1
            await anyio.sleep(0.08)
            release.set()
        samples = await scrape(client)

    pings = responses[0].text.count(": ping\n\n")
    assert pings >= 2
    assert samples.value("mesh_images_stream_pings_total") == pings
    assert samples.value("mesh_images_streams_open") == 0
    assert (
        samples.value(
            "mesh_images_requests_total",
            **requests(GEN, GPT2, "openai", status="200", stream="true"),
        )
        == 1
    )


@pytest.mark.anyio
async def test_a_stream_that_ends_with_an_error_event_counts_the_errors_status() -> None:
    openai = Scripted(UpstreamError("refused", provider_code="bad_response"))
    async with ops_app(openai) as (_, client):
        response = await client.post(GEN, json=body(GPT2, stream=True))
        samples = await scrape(client)
    assert response.status_code == 200
    assert '"code":"upstream_error"' in response.text
    labels = requests(GEN, GPT2, "openai", status="502", stream="true")
    assert samples.value("mesh_images_requests_total", **labels) == 1


@pytest.mark.anyio
async def test_an_open_circuit_shows_in_the_circuit_state() -> None:
    openai = Scripted(overloaded())
    async with ops_app(openai, breaker_minimum_calls=1, max_attempts=1) as (_, client):
        failed = await client.post(GEN, json=body(GPT2))
        samples = await scrape(client)
    assert failed.status_code == 502
    assert samples.value("mesh_images_circuit_state", model=GPT2, state="open") == 1
    assert samples.value("mesh_images_circuit_state", model=GPT2, state="closed") == 0
    labels = requests(GEN, GPT2, "openai", status="502")
    assert samples.value("mesh_images_requests_total", **labels) == 1


@pytest.mark.anyio
async def test_rate_limit_rejections_are_counted_by_key_label_never_by_key() -> None:
    key = WATCH.secret(new_key())
    keys = [{"hash": hash_key(key), "label": "team-a", "rpm": 1}]
    async with ops_app(api_keys=keys) as (_, client):
        auth = {"authorization": f"Bearer {key}"}
        first = await client.post(GEN, json=body(LOCAL, size="256x256"), headers=auth)
        second = await client.post(GEN, json=body(LOCAL, size="256x256"), headers=auth)
        samples = await scrape(client)  # /metrics asks for no key by default
    assert [first.status_code, second.status_code] == [200, 429]
    assert samples.value("mesh_images_rate_limited_total", key_label="team-a") == 1
    assert samples.value("mesh_images_requests_total", **requests(status="429")) == 1
    assert key not in samples.text
    assert hash_key(key).removeprefix("sha256:") not in samples.text


@pytest.mark.anyio
async def test_metrics_auth_makes_the_route_ask_for_a_key_with_the_admin_scope() -> None:
    admin, tenant = WATCH.secret(new_key()), WATCH.secret(new_key())
    keys = [
        {"hash": hash_key(admin), "label": "ops", "scopes": ["admin"]},
        {"hash": hash_key(tenant), "label": "team-a"},
    ]
    async with ops_app(api_keys=keys, metrics_auth=True) as (_, client):
        refused = await client.get("/metrics")
        tenants = await client.get("/metrics", headers={"authorization": f"Bearer {tenant}"})
        allowed = await client.get("/metrics", headers={"authorization": f"Bearer {admin}"})
    assert refused.status_code == 401
    assert tenants.status_code == 403  # a tenant's key must not see every tenant's series
    assert tenants.json()["error"]["code"] == "forbidden"
    assert "mesh_images_" not in tenants.text
    assert allowed.status_code == 200
    assert "mesh_images_requests_total" in allowed.text


@pytest.mark.anyio
async def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    async with ops_app() as (_, client):
        response = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


@pytest.mark.anyio
async def test_two_apps_in_one_process_keep_their_own_registries() -> None:
    async with ops_app() as (first, first_client), ops_app() as (second, _):
        await first_client.post(GEN, json=body(LOCAL, size="256x256"))
        assert first.metrics.registry is not second.metrics.registry
        labels = requests(GEN, LOCAL, "local", status="200")
        assert first.metrics.registry.get_sample_value("mesh_images_requests_total", labels) == 1
        assert (
            second.metrics.registry.get_sample_value("mesh_images_requests_total", labels) is None
        )


def test_a_metrics_object_belongs_to_one_app_and_may_use_a_given_registry() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    app = ImagesApp(Settings(), metrics=metrics)
    assert app.metrics is metrics
    assert metrics.registry is registry
    with pytest.raises(ValueError, match="give each app its own"):
        ImagesApp(Settings(), metrics=metrics)


def test_the_standalone_app_serves_metrics_and_a_bare_app_does_not() -> None:
    assert "/metrics" in create_app(Settings()).paths
    assert "/metrics" not in ImagesApp(Settings()).paths


@pytest.mark.anyio
async def test_a_host_mounts_the_metrics_of_a_mounted_app_in_one_line() -> None:
    images = ImagesApp(Settings(local_latency=0))
    host = Starlette(
        routes=[Mount("/images", app=images), Mount("/metrics", app=images.metrics.asgi_app())]
    )
    transport = httpx.ASGITransport(app=host)
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
        made = await client.post(f"/images{GEN}", json=body(LOCAL, size="256x256"))
        scraped = await client.get("/metrics/")
    await images.aclose()
    assert made.status_code == 200
    samples = Samples(scraped.text)
    labels = requests(GEN, LOCAL, "local", status="200")
    assert samples.value("mesh_images_requests_total", **labels) == 1


@pytest.mark.anyio
async def test_a_host_using_the_middleware_mounts_the_metrics_it_passed_in() -> None:
    metrics = Metrics()
    host = Starlette(routes=[Mount("/metrics", app=metrics.asgi_app())])
    host.add_middleware(ImagesMiddleware, settings=Settings(local_latency=0), metrics=metrics)
    async with LifespanManager(host) as running:  # the images app closes with the host
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            made = await client.post(GEN, json=body(LOCAL, size="256x256"))
            scraped = await client.get("/metrics/")
    assert made.status_code == 200
    labels = requests(GEN, LOCAL, "local", status="200")
    assert Samples(scraped.text).value("mesh_images_requests_total", **labels) == 1


def _exposed_names(metrics: Metrics) -> dict[str, str]:
    """Every series name the registry writes, mapped to its family's documented name."""
    names: dict[str, str] = {}
    for family in metrics.registry.collect():
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""],
        }[family.type]
        documented = family.name + ("_total" if family.type == "counter" else "")
        for suffix in suffixes:
            names[family.name + suffix] = documented
    return names


def test_the_operations_doc_lists_every_metric_and_its_dashboard_uses_only_real_ones() -> None:
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    exposed = _exposed_names(Metrics())
    documented = set(re.findall(r"^\| `(mesh_images_[a-z_]+)` \|", text, re.MULTILINE))
    assert documented == set(exposed.values())

    dashboard = json.loads(text.split("```json\n")[-1].split("\n```")[0])
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"mesh_images_[a-z_]+", expr)}
    assert used
    assert used <= set(exposed)
    assert {family for name, family in exposed.items() if name in used} >= {
        "mesh_images_requests_total",
        "mesh_images_images_total",
        "mesh_images_cost_usd_total",
        "mesh_images_upstream_duration_seconds",
        "mesh_images_request_duration_seconds",
    }
