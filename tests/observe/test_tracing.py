"""OpenTelemetry spans: one per request and one per upstream attempt, GenAI attributes, the
parent from the incoming ``traceparent`` (or the host's span), and the ``traceparent`` sent
upstream, recorded with an in-memory exporter and an ``httpx.MockTransport`` upstream."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._observe.tracing import Tracing
from tests.helpers import client_for
from tests.support.leaks import WATCH

GEN = "/v1/images/generations"
KEY = WATCH.secret("sk-test-0123456789abcdef")
IMAGE = base64.b64encode(b"\x89PNG not really").decode()
PROMPT = "a lighthouse drawn for the tracing test"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

Reply = Callable[[httpx.Request], httpx.Response]


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "created": 1,
            "data": [{"b64_json": IMAGE}],
            "usage": {"input_tokens": 12, "output_tokens": 272, "total_tokens": 284},
        },
    )


def overloaded(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"error": {"message": "busy", "type": "server_error"}})


class Upstream:
    """A mock OpenAI: answers with ``replies`` in order (then ``ok``), keeps every request."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if self.replies else ok
        return reply(request)


@asynccontextmanager
async def traced_app(
    upstream: Upstream,
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(
        openai_api_key=KEY,
        openai_base_url="http://upstream.test/v1",
        retry_backoff=0,
        local_latency=0,
        keepalive_interval=0.01,
    )
    upstream_client = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    app = ImagesApp(settings, http_client=upstream_client, tracer_provider=provider)
    try:
        async with client_for(app) as client:
            yield client, exporter
    finally:
        await upstream_client.aclose()


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind == kind]


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def span_id_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def all_attribute_text(spans: tuple[ReadableSpan, ...]) -> str:
    return json.dumps([dict(span.attributes or {}) for span in spans], default=str)


@pytest.mark.anyio
async def test_a_request_and_each_upstream_attempt_are_spans_with_genai_attributes() -> None:
    upstream = Upstream(overloaded)  # one retry: two attempts
    async with traced_app(upstream) as (client, exporter):
        response = await client.post(
            GEN,
            json={"model": "openai/gpt-image-2", "prompt": PROMPT, "n": 1},
            headers={"traceparent": TRACEPARENT},
        )
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    (request,) = by_kind(spans, SpanKind.SERVER)
    attempts = by_kind(spans, SpanKind.CLIENT)
    assert len(spans) == 3
    assert len(attempts) == 2

    # The request span continues the caller's trace; attempts are its children.
    assert request.name == "POST /v1/images/generations"
    assert trace_id(request) == TRACE_ID
    assert request.parent is not None
    assert f"{request.parent.span_id:016x}" == PARENT_ID
    for attempt in attempts:
        assert trace_id(attempt) == TRACE_ID
        assert attempt.parent is not None
        assert attempt.parent.span_id == span_id_of(request)

    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.operation.name"] == "image_generation"
    assert attributes["gen_ai.request.model"] == "openai/gpt-image-2"
    assert attributes["gen_ai.response.model"] == "openai/gpt-image-2"
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == 272
    assert attributes["gen_ai.request.choice.count"] == 1
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == GEN
    assert attributes["http.response.status_code"] == 200
    assert attributes["mesh_images.routing.attempts"] == 2
    assert attributes["mesh_images.images"] == 1
    assert request.status.status_code == StatusCode.UNSET

    failed, served = sorted(attempts, key=lambda span: span.start_time or 0)
    for attempt in (failed, served):
        assert attempt.name == "image_generation gpt-image-2"
        assert attempt.attributes is not None
        assert attempt.attributes["gen_ai.operation.name"] == "image_generation"
        assert attempt.attributes["gen_ai.request.model"] == "gpt-image-2"
        assert attempt.attributes["gen_ai.provider.name"] == "openai"
        assert attempt.attributes["mesh_images.model"] == "openai/gpt-image-2"
    assert failed.attributes is not None
    assert served.attributes is not None
    assert failed.attributes["error.type"] == "provider_overloaded"
    assert failed.status.status_code == StatusCode.ERROR
    assert served.attributes["gen_ai.usage.output_tokens"] == 272
    assert "error.type" not in served.attributes
    assert [failed.attributes["mesh_images.attempt"], served.attributes["mesh_images.attempt"]] == [
        1,
        2,
    ]

    # Each upstream request names its own attempt span as the parent.
    assert len(upstream.requests) == 2
    for sent, attempt in zip(upstream.requests, (failed, served), strict=True):
        assert sent.headers["traceparent"] == f"00-{TRACE_ID}-{span_id(attempt)}-01"
        assert "baggage" not in sent.headers

    # Never the prompt or image data in a span.
    text = all_attribute_text(spans)
    assert PROMPT not in text
    assert IMAGE not in text


@pytest.mark.anyio
async def test_a_streamed_request_keeps_the_attempt_under_the_request_span() -> None:
    async with traced_app(Upstream()) as (client, exporter):
        response = await client.post(
            GEN,
            json={"model": "openai/gpt-image-2", "prompt": PROMPT, "stream": True},
            headers={"traceparent": TRACEPARENT},
        )
    assert response.text.endswith("data: [DONE]\n\n")
    spans = exporter.get_finished_spans()
    (request,) = by_kind(spans, SpanKind.SERVER)
    (attempt,) = by_kind(spans, SpanKind.CLIENT)
    assert attempt.parent is not None
    assert request.context is not None
    assert attempt.parent.span_id == request.context.span_id
    assert request.attributes is not None
    assert request.attributes["mesh_images.stream"] is True
    assert request.attributes["http.response.status_code"] == 200


@pytest.mark.anyio
async def test_a_failed_request_marks_its_span_with_the_error_type() -> None:
    async with traced_app(Upstream(*[overloaded] * 10)) as (client, exporter):
        response = await client.post(GEN, json={"model": "openai/gpt-image-2", "prompt": PROMPT})
    assert response.status_code == 502
    spans = exporter.get_finished_spans()
    (request,) = by_kind(spans, SpanKind.SERVER)
    assert request.attributes is not None
    assert request.attributes["error.type"] == "upstream_error"
    assert request.attributes["http.response.status_code"] == 502
    assert request.status.status_code == StatusCode.ERROR
    assert len(by_kind(spans, SpanKind.CLIENT)) == 3  # the first try and two retries


@pytest.mark.anyio
async def test_under_a_host_span_the_request_span_is_its_child() -> None:
    async with traced_app(Upstream()) as (client, exporter):
        # The ASGI transport runs the app in this task: the host span is current inside it.
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("host").start_as_current_span("host request") as host:
            response = await client.post(
                GEN,
                json={"model": "local/sketch", "prompt": PROMPT, "size": "256x256"},
                headers={"traceparent": TRACEPARENT},  # the host already used it
            )
    assert response.status_code == 200
    (ours,) = [span for span in exporter.get_finished_spans() if span.name.startswith("POST")]
    assert ours.kind == SpanKind.INTERNAL
    assert ours.parent is not None
    assert ours.parent.span_id == host.get_span_context().span_id
    assert ours.attributes is not None
    assert ours.attributes["gen_ai.provider.name"] == "local"


@pytest.mark.anyio
async def test_routes_other_than_generations_get_a_plain_span_and_probes_none() -> None:
    async with traced_app(Upstream()) as (client, exporter):
        await client.get("/v1/models")
        await client.get("/nowhere")
    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names == ["GET", "GET /v1/models"]
    for span in exporter.get_finished_spans():
        assert "gen_ai.operation.name" not in (span.attributes or {})


@pytest.mark.anyio
async def test_tracing_off_makes_no_span_and_sends_no_traceparent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    upstream = Upstream()
    client = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    settings = Settings(openai_api_key=KEY, openai_base_url="http://upstream.test/v1", otel=False)
    app = ImagesApp(settings, http_client=client, tracer_provider=provider)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as caller:
        response = await caller.post(
            GEN,
            json={"model": "openai/gpt-image-2", "prompt": PROMPT},
            headers={"traceparent": TRACEPARENT},
        )
    await app.aclose()
    await client.aclose()
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in upstream.requests[0].headers


def test_by_default_tracing_waits_for_a_real_tracer_provider() -> None:
    tracing = Tracing()  # no global provider is set in the test run
    assert tracing.pending
    tracing.resolve()
    assert tracing.tracer is None
    forced = Tracing(True)  # follows the global provider whenever one is set
    forced.resolve()
    assert forced.tracer is not None
    off = Tracing(False)
    assert not off.pending


@pytest.mark.anyio
async def test_an_attempt_span_ends_even_when_the_client_leaves() -> None:
    started = anyio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        started.set()
        await anyio.sleep(10)
        return ok(request)

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    upstream = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    settings = Settings(openai_api_key=KEY, openai_base_url="http://upstream.test/v1")
    app = ImagesApp(settings, http_client=upstream, tracer_provider=provider)
    body = json.dumps({"model": "openai/gpt-image-2", "prompt": PROMPT}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is written to a client that left")

    scope = {
        "type": "http",
        "method": "POST",
        "path": GEN,
        "headers": [(b"content-type", b"application/json")],
    }
    with anyio.fail_after(5):
        await app(scope, receive, send)
    await app.aclose()
    await upstream.aclose()
    spans = exporter.get_finished_spans()
    (attempt,) = by_kind(spans, SpanKind.CLIENT)
    (request,) = by_kind(spans, SpanKind.SERVER)
    assert attempt.attributes is not None
    assert request.attributes is not None
    assert attempt.attributes["error.type"] == "cancelled"
    assert request.attributes["http.response.status_code"] == 499


def test_asking_for_spans_without_opentelemetry_installed_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mesh_images_asgi._observe import tracing

    monkeypatch.setattr(tracing, "available", lambda: False)
    with pytest.raises(RuntimeError, match=r"mesh-images-asgi\[otel\]"):
        Tracing(True)
    quiet = Tracing()  # the default just stays off
    quiet.resolve()
    assert quiet.tracer is None


@pytest.mark.anyio
async def test_a_base_install_without_opentelemetry_serves_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the otel extra there is no ``opentelemetry`` package at all, and asking for a
    # submodule's spec raises instead of answering None: the first request got a bare 500.
    import sys

    from mesh_images_asgi._observe import tracing

    for name in [name for name in sys.modules if name.split(".")[0] == "opentelemetry"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # makes any import of it fail
    assert tracing.available() is False
    app = ImagesApp(Settings(otel=None))
    async with client_for(app) as client:
        answer = await client.post(
            "/v1/images/generations",
            json={"model": "local/sketch", "prompt": "p", "size": "256x256", "n": 1},
        )
        assert answer.status_code == 200, answer.text
        missing = await client.post("/v1/images/generations", json={"model": "nope/x"})
        assert missing.status_code in (404, 422)
        assert "error" in missing.json()
