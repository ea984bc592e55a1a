"""Limits in Redis: atomic across processes, and the fail-open/closed policy when Redis goes away.

Needs the ``redis-server`` binary (each test that stops Redis starts its own); ``.ci/run``
installs it and starts one for the suite (``MESH_IMAGES_TEST_REDIS_URL``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis import asyncio as aioredis

from mesh_images_asgi._access.keys import GatewayKey, hash_key, new_key
from mesh_images_asgi._access.ratelimit import RedisLimiter, Window
from mesh_images_asgi._core.errors import ServiceUnavailable
from tests.asgi.test_app import assert_envelope
from tests.helpers import app_client
from tests.support.clock import wait_for_a_fresh_minute
from tests.support.leaks import WATCH
from tests.support.redis import (
    RedisServer,
    free_port,
    redis_for_tests,
    require_redis_server,
)

GEN = "/v1/images/generations"
REQUEST = {"model": "local/sketch", "prompt": "fox", "size": "256x256"}
REDIS_PASSWORD = WATCH.secret("redis-password-0f9e8d7c")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of this test's own, which the test may stop and start."""
    server = RedisServer(require_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """CI's Redis when there is one, else a Redis of this module's own."""
    with redis_for_tests() as url:
        yield url


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mesh_images_asgi._access.ratelimit._RETRY_INTERVAL", 0.05)


def key_entry(key: str, **limits: Any) -> dict[str, Any]:
    return {"hash": hash_key(key), "label": f"t-{key[-10:]}", **limits}


@pytest.mark.anyio
async def test_concurrent_hits_from_two_limiters_never_exceed_the_limit(redis_url: str) -> None:
    label = "concurrent-" + new_key()[-12:]
    windows = [Window("RPM", 60, 7), Window("RPD", 86_400, 1_000)]
    first = RedisLimiter(redis_url, fail_open=False)
    second = RedisLimiter(redis_url, fail_open=False)
    now = time.time()
    decisions = []

    async def hit(limiter: RedisLimiter) -> None:
        decisions.append(await limiter.hit(label, windows, now))

    try:
        async with anyio.create_task_group() as group:
            for index in range(40):
                group.start_soon(hit, (first, second)[index % 2])
    finally:
        await first.aclose()
        await second.aclose()
    allowed = [decision for decision in decisions if decision.allowed]
    assert len(allowed) == 7
    assert sorted(decision.remaining for decision in allowed) == list(range(7))
    refused = [decision for decision in decisions if not decision.allowed]
    assert {(decision.window.name, decision.remaining) for decision in refused} == {("RPM", 0)}


def _start_gateway(port: int, config: Path, redis: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MESH_IMAGES_REDIS_URL": redis,
        "MESH_IMAGES_LOCAL_LATENCY": "0",
        "MESH_IMAGES_LOG_LEVEL": "debug",
    }
    command = [sys.executable, "-m", "mesh_images_asgi.cli", "serve", "--port", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--config", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway at {base} did not start")
        time.sleep(0.1)


@contextmanager
def _two_gateways(config: Path, redis: str, tmp_path: Path) -> Iterator[list[str]]:
    """Two ``mesh-images serve`` processes with ``config``, sharing ``redis``: their base URLs."""
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"gateway-{port}.log" for port in ports]
    processes = [
        _start_gateway(port, config, redis, log) for port, log in zip(ports, logs, strict=True)
    ]
    try:
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base, process in zip(bases, processes, strict=True):
            _wait_healthy(base, process)
        yield bases
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(15)
        for log in logs:
            WATCH.add_text(log.read_text(errors="replace"))


def test_two_gateway_processes_sharing_one_redis_hold_the_limit_in_total(
    redis_url: str, tmp_path: Path
) -> None:
    key = WATCH.secret(new_key())
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[keys]]\nhash = "{hash_key(key)}"\nlabel = "two-procs-{key[-8:]}"\nrpm = 5\n'
    )
    with _two_gateways(config, redis_url, tmp_path) as bases:
        wait_for_a_fresh_minute(needed=5)
        answers = [
            httpx.post(
                f"{bases[index % 2]}{GEN}",
                json=REQUEST,
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
            for index in range(12)
        ]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200] * 5 + [429] * 7
    served_by = [index % 2 for index, answer in enumerate(answers) if answer.status_code == 200]
    assert set(served_by) == {0, 1}  # both processes served, and counted together
    remaining = [answer.headers["x-ratelimit-remaining-requests"] for answer in answers[:5]]
    assert remaining == ["4", "3", "2", "1", "0"]
    for refused in answers[5:]:
        error = assert_envelope(refused, 429, "rate_limit_exceeded")
        assert int(refused.headers["retry-after"]) == error["retry_after_seconds"]


def _outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "mesh_images_asgi" and "Redis is" in record.getMessage()
    ]


@pytest.mark.anyio
@pytest.mark.usefixtures("fast_retry")
async def test_fail_open_limits_each_process_in_memory_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mesh_images_asgi")
    wait_for_a_fresh_minute(needed=15)
    key = WATCH.secret(new_key())
    auth = {"authorization": f"Bearer {key}"}
    settings = {"api_keys": [key_entry(key, rpm=3)], "redis_url": redis_server.url}
    async with app_client(**settings, rate_limit_fail_open=True) as client:
        before = [await client.post(GEN, json=REQUEST, headers=auth) for _ in range(2)]
        redis_server.stop()
        during = [await client.post(GEN, json=REQUEST, headers=auth) for _ in range(5)]
        assert len(_outage_warnings(caplog)) == 1  # once per outage, not once per request
        redis_server.start()
        await anyio.sleep(0.1)
        after = await client.post(GEN, json=REQUEST, headers=auth)
    assert [answer.status_code for answer in before] == [200, 200]
    # Redis away: this process alone enforces the key's limit, from the count Redis last gave.
    assert [answer.status_code for answer in during] == [200, 429, 429, 429, 429]
    assert_envelope(during[-1], 429, "rate_limit_exceeded")
    # Redis back (a fresh server, its counters gone): it is told what this process counted.
    assert_envelope(after, 429, "rate_limit_exceeded")
    assert after.headers["x-ratelimit-remaining-requests"] == "0"
    warnings = _outage_warnings(caplog)
    assert len(warnings) == 2
    assert "unavailable" in warnings[0]
    assert "fail open" in warnings[0]
    assert "available again" in warnings[1]


@pytest.mark.anyio
@pytest.mark.usefixtures("fast_retry")
async def test_fail_closed_refuses_with_503_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mesh_images_asgi")
    key = WATCH.secret(new_key())
    auth = {"authorization": f"Bearer {key}"}
    settings = {"api_keys": [key_entry(key, rpm=100)], "redis_url": redis_server.url}
    async with app_client(**settings, rate_limit_fail_open=False) as client:
        before = await client.post(GEN, json=REQUEST, headers=auth)
        redis_server.stop()
        during = [await client.post(GEN, json=REQUEST, headers=auth) for _ in range(3)]
        redis_server.start()
        await anyio.sleep(0.1)
        after = await client.post(GEN, json=REQUEST, headers=auth)
    assert before.status_code == 200
    for refused in during:
        error = assert_envelope(refused, 503, "service_unavailable")
        assert refused.headers["retry-after"] == "1"
        assert error["retry_after_seconds"] == 1
    assert after.status_code == 200
    warnings = _outage_warnings(caplog)
    assert len(warnings) == 2
    assert "fail closed" in warnings[0]


@pytest.mark.anyio
async def test_the_redis_password_never_reaches_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mesh_images_asgi")
    key = WATCH.secret(new_key())
    server = RedisServer(require_redis_server(), password=WATCH.secret("the-right-one-4417"))
    server.start()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"  # the wrong password
    try:
        async with app_client(api_keys=[key_entry(key, rpm=5)], redis_url=url) as client:
            auth = {"authorization": f"Bearer {key}"}
            answer = await client.post(GEN, json=REQUEST, headers=auth)
    finally:
        server.stop()
    assert answer.status_code == 200  # fail open
    warnings = _outage_warnings(caplog)
    assert len(warnings) == 1
    assert REDIS_PASSWORD not in caplog.text
    assert REDIS_PASSWORD not in json.dumps(warnings)


def test_the_limiter_reports_its_binding_window(redis_url: str) -> None:
    key = GatewayKey(hash=hash_key(new_key()), label="window-" + new_key()[-8:], rpm=10, rpd=2)

    async def main() -> list[Any]:
        limiter = RedisLimiter(redis_url, fail_open=False)
        try:
            windows = [Window("RPM", 60, key.rpm or 0), Window("RPD", 86_400, key.rpd or 0)]
            return [await limiter.hit(key.label, windows, time.time()) for _ in range(3)]
        finally:
            await limiter.aclose()

    first, second, third = anyio.run(main)
    assert (first.window.name, first.remaining) == ("RPD", 1)
    assert (second.allowed, third.allowed) == (True, False)
    assert third.window.name == "RPD"


def test_a_burst_of_400_concurrent_requests_on_two_processes_keeps_the_limit_exact(
    redis_url: str, tmp_path: Path
) -> None:
    """Far more requests at once than Redis connections: they wait for one (back-pressure), and
    none is taken for a Redis outage (which let a burst through on memory counts)."""
    key = WATCH.secret(new_key())
    config = tmp_path / "gateway.toml"
    config.write_text(
        "redis_max_connections = 8\nredis_pool_timeout = 30\n"  # a timeout to catch hangs only
        f'[[keys]]\nhash = "{hash_key(key)}"\nlabel = "burst-{key[-8:]}"\nrpm = 100\n'
    )

    async def burst(bases: list[str]) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=400)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            posts = [
                client.post(
                    f"{bases[index % 2]}{GEN}",
                    json={"prompt": "fox"},  # counted, then 422 (no model): nothing to render
                    headers={"authorization": f"Bearer {key}"},
                )
                for index in range(400)
            ]
            return list(await asyncio.gather(*posts))

    with _two_gateways(config, redis_url, tmp_path) as bases:
        wait_for_a_fresh_minute(needed=30)
        answers = asyncio.run(burst(bases))
    statuses = Counter(answer.status_code for answer in answers)
    assert statuses == {422: 100, 429: 300}, statuses


@pytest.mark.anyio
async def test_more_concurrent_hits_than_connections_wait_for_one_and_the_limit_holds(
    redis_url: str,
) -> None:
    label = "burst-" + new_key()[-12:]
    windows = [Window("RPM", 60, 100)]
    limiter = RedisLimiter(redis_url, fail_open=True)  # 400 hits on a pool of 50 (100 on main)
    now = time.time()
    try:
        decisions = await asyncio.gather(*(limiter.hit(label, windows, now) for _ in range(400)))
    finally:
        await limiter.aclose()
    assert sum(decision.allowed for decision in decisions) == 100  # not 100 + 100 from memory


@pytest.mark.anyio
@pytest.mark.usefixtures("fast_retry")
async def test_counts_carry_over_when_redis_flaps(redis_server: RedisServer) -> None:
    label = "flap-" + new_key()[-12:]
    windows = [Window("RPM", 60, 10)]
    limiter = RedisLimiter(redis_server.url, fail_open=True)
    now = time.time()  # one window throughout: the clock is given, not read

    async def until_refused(most: int) -> int:
        for admitted in range(most):
            if not (await limiter.hit(label, windows, now)).allowed:
                return admitted
        return most

    try:
        admitted = [await until_refused(3)]
        for _ in range(3):  # Redis goes away (and comes back empty: no persistence), 3 times
            redis_server.stop()
            admitted.append(await until_refused(20))
            redis_server.start()
            await anyio.sleep(0.1)  # past the retry interval: the next hit goes to Redis
            admitted.append(await until_refused(20))
    finally:
        await limiter.aclose()
    assert admitted == [3, 7, 0, 0, 0, 0, 0]  # 10 in all, however often Redis flapped
    async with aioredis.Redis.from_url(redis_server.url) as redis:  # and Redis was told
        assert await redis.get(f"mesh-images:rl:{{{label}}}:RPM:{int(now // 60)}") == b"10"


@pytest.mark.anyio
async def test_no_connection_within_the_pool_timeout_is_503_back_pressure_not_an_outage(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mesh_images_asgi")
    label = "pool-" + new_key()[-12:]
    windows = [Window("RPM", 60, 5)]
    limiter = RedisLimiter(redis_url, fail_open=True, max_connections=1, pool_timeout=0.05)
    pool = limiter._client.connection_pool
    try:
        held = await pool.get_connection()  # every connection busy
        with pytest.raises(ServiceUnavailable) as raised:
            await limiter.hit(label, windows, time.time())
        await pool.release(held)
        after = await limiter.hit(label, windows, time.time())
    finally:
        await limiter.aclose()
    assert raised.value.retry_after_seconds == 1.0
    assert after.allowed
    assert after.remaining == 4  # the refused hit was not counted, in Redis or in memory
    assert _outage_warnings(caplog) == []  # and Redis was not taken to be down
