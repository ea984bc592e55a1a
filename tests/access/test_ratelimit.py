"""Per-key limits: fixed UTC minute and day windows, 429 with Retry-After and x-ratelimit-*."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mesh_images_asgi._access.keys import GatewayKey, hash_key, new_key
from mesh_images_asgi._access.ratelimit import DAY, MemoryLimiter, Window, _duration, enforce
from mesh_images_asgi._core.errors import RateLimitExceeded
from tests.asgi.test_app import assert_envelope
from tests.helpers import app_client
from tests.support.clock import wait_for_a_fresh_minute
from tests.support.leaks import WATCH

GEN = "/v1/images/generations"
KEY = WATCH.secret(new_key())
REQUEST = {"model": "local/sketch", "prompt": "fox", "size": "256x256"}


def gateway_key(**limits: Any) -> GatewayKey:
    return GatewayKey(hash=hash_key(KEY), label="alice", **limits)


def headers_of(error: RateLimitExceeded) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in error.response_headers()}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (0.2, "1s"),
        (59, "59s"),
        (60, "1m0s"),
        (61.5, "1m2s"),
        (3600, "1h0m0s"),
        (86399, "23h59m59s"),
    ],
)
def test_reset_times_read_like_openais(seconds: float, shown: str) -> None:
    assert _duration(seconds) == shown


@pytest.mark.anyio
async def test_a_minute_window_counts_then_refuses_then_resets_on_the_minute() -> None:
    limiter, key = MemoryLimiter(), gateway_key(rpm=2)
    first = await enforce(limiter, key, now=600.0)
    second = await enforce(limiter, key, now=630.0)
    assert dict(first)[b"x-ratelimit-remaining-requests"] == b"1"
    assert dict(second)[b"x-ratelimit-remaining-requests"] == b"0"
    assert dict(second)[b"x-ratelimit-reset-requests"] == b"30s"
    with pytest.raises(RateLimitExceeded) as refused:
        await enforce(limiter, key, now=645.5)
    error = refused.value
    assert error.message == "RPM limit of 2 requests per minute exceeded for this API key."
    assert error.error_object()["retry_after_seconds"] == 15
    assert headers_of(error) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "15s",
        "retry-after": "15",
    }
    assert await enforce(limiter, key, now=660.0)  # the next UTC minute


@pytest.mark.anyio
async def test_refused_requests_are_not_counted_and_the_day_window_binds_last() -> None:
    limiter, key = MemoryLimiter(), gateway_key(rpm=2, rpd=3)
    day = 20_000 * DAY
    await enforce(limiter, key, now=day + 1)
    await enforce(limiter, key, now=day + 2)
    for _ in range(5):  # refused by the minute: the day's count stays at 2
        with pytest.raises(RateLimitExceeded):
            await enforce(limiter, key, now=day + 3)
    headers = dict(await enforce(limiter, key, now=day + 61))
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    with pytest.raises(RateLimitExceeded) as refused:
        await enforce(limiter, key, now=day + 125)
    assert refused.value.message.startswith("RPD limit of 3 requests per day")
    assert refused.value.error_object()["retry_after_seconds"] == DAY - 125
    assert headers_of(refused.value)["x-ratelimit-reset-requests"] == "23h57m55s"
    assert await enforce(limiter, key, now=day + DAY)


@pytest.mark.anyio
async def test_keys_count_apart_and_a_key_without_limits_is_not_counted() -> None:
    limiter = MemoryLimiter()
    alice, bob = gateway_key(rpm=1), GatewayKey(hash=hash_key(new_key()), label="bob", rpm=1)
    await enforce(limiter, alice, now=0.0)
    await enforce(limiter, bob, now=0.0)
    with pytest.raises(RateLimitExceeded):
        await enforce(limiter, alice, now=1.0)
    assert await enforce(limiter, gateway_key(), now=1.0) == []
    decision = await limiter.hit("carol", [Window("RPM", 60, 5), Window("RPD", DAY, 2)], 0.0)
    assert (decision.window.name, decision.remaining) == ("RPD", 1)  # the tightest is reported


@pytest.mark.anyio
async def test_the_app_sends_ratelimit_headers_and_a_429_envelope() -> None:
    wait_for_a_fresh_minute(needed=10)
    keys = [{"hash": hash_key(KEY), "label": "alice", "rpm": 2}]
    async with app_client(api_keys=keys) as client:
        auth = {"authorization": f"Bearer {KEY}"}
        ok = await client.post(GEN, json=REQUEST, headers=auth)
        streamed = await client.post(GEN, json={**REQUEST, "stream": True}, headers=auth)
        refused = await client.post(GEN, content=b"not even json", headers=auth)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["x-ratelimit-remaining-requests"] == "0"
    error = assert_envelope(refused, 429, "rate_limit_exceeded")  # before the body is judged
    assert int(refused.headers["retry-after"]) == error["retry_after_seconds"]
    assert 1 <= error["retry_after_seconds"] <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert KEY not in json.dumps(dict(refused.headers)) + refused.text


@pytest.mark.anyio
async def test_without_keys_nothing_is_limited_and_no_headers_are_sent() -> None:
    async with app_client() as client:
        answers = [await client.post(GEN, json=REQUEST) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200] * 3
    assert not any(name.startswith("x-ratelimit") for name in answers[0].headers)
