"""The circuit breaker opening and closing, and the bulkhead refusing, over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from mesh_images_asgi.providers import local
from tests.emulators.openai import server_error
from tests.faults.conftest import Gateway, Upstreams, error_of

MakeGateway = Callable[..., AbstractContextManager[Gateway]]


def test_the_circuit_opens_after_consecutive_failures_and_closes_after_a_probe(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    emulator = upstreams.openai
    emulator.fault = server_error()
    with make_gateway(breaker_threshold=2, breaker_cooldown=0.5, retries_per_model=0) as gw:
        for _ in range(2):
            assert gw.post({}).status_code == 502
        assert len(emulator.requests) == 2
        refused = gw.post({})  # open: the upstream is not called at all
        assert refused.status_code == 503
        assert error_of(refused)["code"] == "provider_not_available"
        assert "circuit open" in error_of(refused)["message"]
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-mesh-routing-attempts"] == "0"
        assert len(emulator.requests) == 2
        elsewhere = gw.post({"models": ["openai/gpt-image-1.5"]})  # open: straight to fallback
        assert elsewhere.headers["x-mesh-routing-model"] == "openai/gpt-image-1.5"
        assert elsewhere.status_code == 502  # the emulator fails every model here
        time.sleep(0.55)
        emulator.fault = None
        probe = gw.post({})
        assert probe.status_code == 200
        assert probe.headers["x-mesh-routing-attempts"] == "1"
        assert gw.post({}).status_code == 200  # closed again


def test_a_failed_probe_opens_the_circuit_again(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault = server_error()
    with make_gateway(breaker_threshold=1, breaker_cooldown=0.3, retries_per_model=0) as gw:
        assert gw.post({}).status_code == 502
        time.sleep(0.35)
        assert gw.post({}).status_code == 502  # the probe, failed
        assert gw.post({}).status_code == 503
        assert len(upstreams.openai.requests) == 2


def test_a_full_bulkhead_answers_503_with_retry_after_and_calls_nobody(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    upstreams.openai.latency = 0.6
    with make_gateway(bulkhead_limit=1, bulkhead_queue=1) as gw:

        def post(delay: float) -> httpx.Response:
            time.sleep(delay)
            return gw.post({})

        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(post, [0, 0.1, 0.2]))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503]
    refused = next(r for r in responses if r.status_code == 503)
    assert error_of(refused)["code"] == "provider_not_available"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-mesh-routing-attempts"] == "0"
    assert len(upstreams.openai.requests) == 2  # one ran, one waited its turn


def test_the_local_renderer_renders_on_its_own_threads_with_a_bounded_queue(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    rendering: list[int] = []
    render = local._render_b64

    def slow_render(*args: Any) -> str:  # a render that holds its core until released
        rendering.append(threading.get_ident())
        release.wait(30)
        return render(*args)

    monkeypatch.setattr(local, "_render_b64", slow_render)
    body = {"model": "local/sketch", "size": "256x256"}
    with (
        make_gateway(local_render_threads=1, local_render_queue=1) as gw,
        ThreadPoolExecutor(2) as pool,
    ):
        renderer = getattr(gw.app.service.providers["local"], "renderer", None)
        try:
            first = pool.submit(gw.post, body, timeout=30)
            queued = pool.submit(gw.post, body, timeout=30)
            deadline = time.monotonic() + 20  # until one renders and one waits (or, unbounded,
            while len(rendering) < 2 and getattr(renderer, "waiting", 0) < 1:  # both render)
                assert time.monotonic() < deadline, rendering
                time.sleep(0.01)
            assert len(rendering) == 1
            refused = gw.post(body, timeout=10)  # one rendering, one waiting: no room
        finally:
            release.set()
        answers = [first.result().status_code, queued.result().status_code]
    assert refused.status_code == 503, refused.text
    assert error_of(refused)["code"] == "provider_not_available"
    assert "local is at capacity" in error_of(refused)["message"]
    assert refused.headers["retry-after"] == "1"
    assert answers == [200, 200]
    assert len(rendering) == 2  # the refused request rendered nothing
