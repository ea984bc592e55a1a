"""The circuit breaker opening and closing (per request, on a failure rate, 429s aside, a probe
with its own timeout, panic with no fallback), and the bulkhead refusing, over real HTTP."""

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
from tests.emulators.openai import Fault, rate_limited, server_error
from tests.faults.conftest import Answer, Gateway, Upstreams, error_of

MakeGateway = Callable[..., AbstractContextManager[Gateway]]


SECOND = "openai/gpt-image-1.5"
CIRCUIT: dict[str, Any] = {"breaker_minimum_calls": 2, "breaker_failure_rate": 1.0}


def primary_fails(*answers: Answer) -> Callable[[Any], Answer]:
    """``gpt-image-2`` answers ``answers`` in turn (the last one for ever); the others are fine."""
    queue = list(answers)

    def answer(body: Any) -> Answer:
        if not isinstance(body, dict) or body.get("model") != "gpt-image-2":
            return None
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return answer


def test_two_failed_requests_do_not_open_the_only_models_circuit(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    """Each retry used to count: two failed requests opened the circuit, then healthy ones
    got 503 (1.6 % of the soak's)."""
    upstreams.openai.fault = server_error()
    with make_gateway(breaker_minimum_calls=20) as gw:  # the default volume
        for _ in range(2):
            failed = gw.post({})
            assert (failed.status_code, failed.headers["x-mesh-routing-attempts"]) == (502, "3")
        upstreams.openai.fault = None
        healthy = gw.post({"models": [SECOND]})
    assert healthy.status_code == 200
    assert healthy.headers["x-mesh-routing-model"] == "openai/gpt-image-2"


def test_rate_limits_do_not_open_the_circuit(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault = rate_limited(retry_after="30")
    with make_gateway(**CIRCUIT) as gw:
        for _ in range(3):
            assert gw.post({}).status_code == 429
        upstreams.openai.fault = None
        served = gw.post({"models": [SECOND]})
    assert served.status_code == 200
    assert served.headers["x-mesh-routing-model"] == "openai/gpt-image-2"


def test_the_circuit_opens_on_its_failure_rate_and_a_probe_closes_it(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    emulator = upstreams.openai
    emulator.fault_for = primary_fails(server_error())
    with make_gateway(**CIRCUIT, breaker_cooldown=0.5) as gw:
        for _ in range(2):
            rerouted = gw.post({"models": [SECOND]})
            assert rerouted.headers["x-mesh-routing-model"] == SECOND
            assert rerouted.headers["x-mesh-routing-attempts"] == "4"
        emulator.requests.clear()
        open_ = gw.post({"models": [SECOND]})  # open: straight to the fallback
        assert (open_.status_code, open_.headers["x-mesh-routing-attempts"]) == (200, "1")
        assert [r.body["model"] for r in emulator.requests] == ["gpt-image-1.5"]
        time.sleep(0.55)  # the cooldown (what follows does not depend on how long it took)
        emulator.fault_for = None
        probe = gw.post({"models": [SECOND]})
        assert probe.headers["x-mesh-routing-model"] == "openai/gpt-image-2"
        assert probe.headers["x-mesh-routing-attempts"] == "1"
        assert gw.post({"models": [SECOND]}).headers["x-mesh-routing-model"] == "openai/gpt-image-2"


def test_a_hanging_probe_is_cut_by_its_own_timeout_and_the_fallback_serves(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    """A hanging probe used to hold the model (and its request) for the whole deadline."""
    emulator = upstreams.openai
    emulator.fault_for = primary_fails(server_error(), server_error(), Fault.HANG)
    settings = {**CIRCUIT, "breaker_cooldown": 0.3, "retries_per_model": 0}
    with make_gateway(**settings, breaker_probe_timeout=0.3, upstream_timeout=5) as gw:
        for _ in range(2):
            assert gw.post({"models": [SECOND]}).headers["x-mesh-routing-model"] == SECOND
        time.sleep(0.35)
        response = gw.post({"models": [SECOND]})
    assert response.status_code == 200
    assert response.headers["x-mesh-routing-model"] == SECOND
    assert response.headers["x-mesh-routing-attempts"] == "2"
    assert emulator.wait_cancelled(2)  # the probe's upstream call was cut


def test_with_no_fallback_an_open_circuit_is_still_called(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    """Envoy's panic threshold: refusing the only model helps no one."""
    upstreams.openai.fault = server_error()
    with make_gateway(**CIRCUIT, breaker_cooldown=30, retries_per_model=0) as gw:
        for _ in range(3):
            assert gw.post({}).status_code == 502  # the third went through the open circuit
        assert len(upstreams.openai.requests) == 3
        upstreams.openai.fault = None
        served = gw.post({})
        assert (served.status_code, served.headers["x-mesh-routing-attempts"]) == (200, "1")
        emulator_calls = len(upstreams.openai.requests)
        assert gw.post({"models": [SECOND]}).headers["x-mesh-routing-model"] == (
            "openai/gpt-image-2"  # the panic call's success closed the circuit
        )
        assert len(upstreams.openai.requests) == emulator_calls + 1


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
            # both render). The first holds its slot from before its render thread starts: wait
            # for the render itself, not only for the second to queue behind it.
            while len(rendering) < 2 and (not rendering or getattr(renderer, "waiting", 0) < 1):
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
