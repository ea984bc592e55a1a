"""Streams and disconnects over real HTTP: retries and fallbacks before any image was sent, never
after; the routing record in the final chunk; a client that leaves (during retries, during a
stream); a server that shuts down in the middle of a stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from mesh_images_asgi import ImagesApp
from tests.emulators.openai import StreamError, overloaded
from tests.faults.conftest import GEN, Gateway, Upstreams, by_model, sequence, sse_events
from tests.support.live import serve

MakeGateway = Callable[..., AbstractContextManager[Gateway]]


def stream(gateway: Gateway, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    response = gateway.post({"stream": True, **body})
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    return response, sse_events(response.text)


def test_a_stream_is_retried_until_its_first_image(gateway: Gateway, upstreams: Upstreams) -> None:
    upstreams.openai.fault_for = sequence(overloaded())
    response, events = stream(gateway, {})
    assert response.headers["x-mesh-routing-model"] == "openai/gpt-image-2"
    assert [e["status"] for e in events] == ["processing", "completed"]
    assert events[-1]["routing"] == {
        "model": "openai/gpt-image-2",
        "attempts": 2,
        "fallback": False,
        "byok_fallback": False,
    }


def test_a_stream_falls_back_and_its_final_chunk_names_the_model_that_served(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault_for = by_model({"gpt-image-2": overloaded()})
    response, events = stream(gateway, {"models": ["openai/gpt-image-1.5"]})
    assert response.headers["x-mesh-routing-model"] == "openai/gpt-image-2"  # known at start
    final = events[-1]
    assert (final["model"], final["routing"]["fallback"]) == ("openai/gpt-image-1.5", True)
    assert final["routing"]["attempts"] == 4


def test_never_a_retry_after_partial_images_were_sent(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault = StreamError()
    _, events = stream(
        gateway, {"partial_images": 2, "models": ["openai/gpt-image-1.5"], "size": "1024x1024"}
    )
    assert [e.get("status") for e in events[:3]] == ["processing", "partial", "partial"]
    error = events[-1]
    assert error["error"]["code"] == "upstream_error"
    assert error["routing"]["attempts"] == 1
    assert len(upstreams.openai.requests) == 1


def test_a_stream_that_fails_everywhere_ends_with_the_error_and_its_routing(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault = overloaded()
    _, events = stream(gateway, {})
    assert events[-1]["error"]["provider_code"] == "provider_overloaded"
    assert events[-1]["routing"]["attempts"] == 3


def test_a_client_gone_during_a_stream_cancels_the_upstream_call(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.latency = 5
    body = {"model": "openai/gpt-image-2", "prompt": "a fox", "stream": True, "partial_images": 1}
    with httpx.stream("POST", gateway.url + GEN, json=body, timeout=5) as response:
        for line in response.iter_lines():
            if '"processing"' in line:
                break
    assert upstreams.openai.wait_cancelled(3)
    assert len(upstreams.openai.requests) == 1


def test_a_client_gone_during_retries_stops_them(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault = overloaded()
    with make_gateway(retry_backoff=1.0, retry_backoff_max=1.0) as gw:
        idle = gw.tasks()
        with pytest.raises(httpx.ReadTimeout):
            gw.post({}, timeout=0.3)  # the first retry waits 0.5-1 s: we are gone by then
        time.sleep(1.2)
        assert len(upstreams.openai.requests) == 1
        assert gw.tasks() <= idle


def test_a_stream_cut_by_the_servers_shutdown_gets_an_error_then_done(
    upstreams: Upstreams,
) -> None:
    upstreams.openai.latency = 5
    lines: list[str] = []
    started = threading.Event()
    app = ImagesApp(upstreams.settings(upstream_timeout=10))

    def read(url: str) -> None:
        body = {"model": "openai/gpt-image-2", "prompt": "a fox", "stream": True}
        with httpx.stream("POST", url + GEN, json=body, timeout=10) as response:
            for line in response.iter_lines():
                lines.append(line)
                started.set()

    with serve(app, timeout_graceful_shutdown=0.3) as url:
        reader = threading.Thread(target=read, args=(url,))
        reader.start()
        assert started.wait(5)
    reader.join(5)
    events = sse_events("\n".join(lines))
    assert events[0]["status"] == "processing"
    assert events[-1]["error"]["code"] == "provider_not_available"
    assert [line for line in lines if line][-1] == "data: [DONE]"
    assert upstreams.openai.wait_cancelled(3)
