"""The fault matrix: each upstream failure, injected into the OpenAI emulator, against the shared
gateway over real HTTP. Each row asserts the client's status, code and headers and the number of
requests the upstream received (which is what ``X-Mesh-Routing-Attempts`` must say).

Gateway knobs (``conftest.FAST``): deadline 1.5 s, backoff 20-100 ms, 2 retries per model, at
most 4 attempts, Retry-After honoured up to 2 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.emulators.openai import (
    Fault,
    invalid_api_key,
    moderation_blocked,
    overloaded,
    rate_limited,
    server_error,
)
from tests.faults.conftest import Answer, Gateway, Upstreams, by_model, error_of, sequence


def always(answer: Answer) -> Callable[[], Callable[[Any], Answer]]:
    return lambda: lambda body: answer


def first(*answers: Answer) -> Callable[[], Callable[[Any], Answer]]:
    return lambda: sequence(*answers)


@dataclass(frozen=True)
class Row:
    name: str
    answers: Callable[[], Callable[[Any], Answer]]
    status: int
    code: str | None = None
    provider_code: str | None = None
    attempts: int = 1
    body: dict[str, Any] = field(default_factory=dict)
    latency: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    upstream_models: list[str] | None = None
    took: tuple[float, float] = (0.0, 1.4)
    """Bounds of the request's duration in seconds."""


UPSTREAM, LIMITED, TIMEOUT = "upstream_error", "upstream_rate_limit_error", "gateway_timeout"

ROWS = [
    Row("429 Retry-After: 1, then ok", first(rate_limited(retry_after="1")), 200, attempts=2,
        took=(0.95, 1.5)),
    Row("429 retry-after-ms: 200, then ok", first(rate_limited(retry_after_ms="200")), 200,
        attempts=2, took=(0.19, 0.9)),
    Row("429 without Retry-After, then ok: backoff", first(rate_limited()), 200, attempts=2,
        took=(0.0, 0.6)),
    Row("429 storm", always(rate_limited(retry_after_ms="50")), 429, LIMITED,
        "rate_limit_exceeded", attempts=3, headers={"retry-after": "1"}),
    Row("429 asking for longer than the gateway waits", always(rate_limited(retry_after="30")),
        429, LIMITED, "rate_limit_exceeded", attempts=1, headers={"retry-after": "30"}),
    Row("500, then ok", first(server_error()), 200, attempts=2),
    Row("500 storm", always(server_error()), 502, UPSTREAM, "internal_provider_error",
        attempts=3),
    Row("503 storm", always(overloaded()), 502, UPSTREAM, "provider_overloaded", attempts=3),
    Row("connection dropped before the answer, then ok", first(Fault.DROP), 200, attempts=2),
    Row("hang past the deadline", always(Fault.HANG), 504, TIMEOUT, "provider_timeout",
        took=(1.45, 2.5)),
    Row("reset mid-body", always(Fault.TRUNCATED), 502, UPSTREAM, "bad_response"),
    Row("malformed JSON", always(Fault.MALFORMED), 502, UPSTREAM, "bad_response"),
    Row("truncated base64", always(Fault.BAD_BASE64), 502, UPSTREAM, "bad_response"),
    Row("image cut on a base64 quantum", always(Fault.CUT_IMAGE), 502, UPSTREAM, "bad_response"),
    Row("JPEG cut on a base64 quantum", always(Fault.CUT_IMAGE), 502, UPSTREAM, "bad_response",
        body={"output_format": "jpeg"}),
    Row("WebP cut on a base64 quantum", always(Fault.CUT_IMAGE), 502, UPSTREAM, "bad_response",
        body={"output_format": "webp"}),
    Row("slow body within the deadline", always(Fault.SLOW_BODY), 200, latency=0.5,
        took=(0.45, 1.4)),
    Row("slow body past the deadline", always(Fault.SLOW_BODY), 504, TIMEOUT,
        "provider_timeout", latency=5, took=(1.45, 2.5)),
    Row("a refusal (400) is never retried", always(moderation_blocked()), 400,
        "content_policy_violation", "moderation_blocked"),
    Row("the gateway's key refused", always(invalid_api_key()), 502, "upstream_auth_error",
        "invalid_api_key"),
    Row("fallback to a second model (request models)",
        lambda: by_model({"gpt-image-2": overloaded()}), 200, attempts=4,
        body={"models": ["openai/gpt-image-1.5"]},
        headers={"x-mesh-routing-model": "openai/gpt-image-1.5", "x-mesh-routing-fallback": "true"},
        upstream_models=["gpt-image-2"] * 3 + ["gpt-image-1.5"]),
    Row("fallback to a second model (catalog fallbacks)",
        lambda: by_model({"gpt-image-2.6-flare": server_error()}), 200, attempts=4,
        body={"model": "openai/gpt-image-2.6-flare"},
        headers={"x-mesh-routing-model": "openai/gpt-image-1.5", "x-mesh-routing-fallback": "true"},
        upstream_models=["gpt-image-2.6-flare"] * 3 + ["gpt-image-1.5"]),
    Row("429 storm on the primary, Retry-After too long: straight to the fallback",
        lambda: by_model({"gpt-image-2": rate_limited(retry_after="30")}), 200, attempts=2,
        body={"models": ["openai/gpt-image-1.5"]},
        upstream_models=["gpt-image-2", "gpt-image-1.5"]),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_fault_matrix(row: Row, gateway: Gateway, upstreams: Upstreams) -> None:
    emulator = upstreams.openai
    emulator.fault_for = row.answers()
    emulator.latency = row.latency
    started = time.monotonic()
    response = gateway.post(row.body)
    took = time.monotonic() - started
    assert response.status_code == row.status, response.text
    assert response.headers["x-mesh-routing-attempts"] == str(row.attempts)
    assert len(emulator.requests) == row.attempts
    for name, value in row.headers.items():
        assert response.headers.get(name) == value, name
    if row.code is None:
        assert response.json()["data"]
        assert "x-mesh-routing-model" in response.headers
    else:
        error = error_of(response)
        assert (error["code"], error.get("provider_code")) == (row.code, row.provider_code)
    if row.upstream_models is not None:
        assert [r.body["model"] for r in emulator.requests] == row.upstream_models
    if row.status == 504:  # the upstream learns that nobody waits any more
        assert emulator.wait_cancelled(2)
    assert row.took[0] <= took <= row.took[1] + 1.0, f"took {took:.2f} s"
    assert "sk-" not in response.text


def test_garbage_from_the_client_never_reaches_the_upstream(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    response = httpx.post(gateway.url + "/v1/images/generations", content=b'{"prompt": "a",')
    assert (response.status_code, error_of(response)["code"]) == (400, "invalid_json")
    assert upstreams.openai.requests == []


def test_an_attempt_that_gets_no_answer_in_time_is_retried(
    make_gateway: Callable[..., AbstractContextManager[Gateway]], upstreams: Upstreams
) -> None:
    upstreams.openai.fault_for = sequence(Fault.HANG)
    with make_gateway(attempt_timeout=0.4) as gw:
        response = gw.post({})
    assert response.status_code == 200
    assert response.headers["x-mesh-routing-attempts"] == "2"
    assert upstreams.openai.requests[0].cancelled
