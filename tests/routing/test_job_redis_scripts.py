"""The Redis queue's scripts on a real ``redis-server``: the first result wins, a finished job
stays as it is, the queue bound holds across submitters; its connections are a bounded pool;
and a gateway whose Redis is down."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._core.errors import ProviderNotAvailable, ServiceUnavailable
from mesh_images_asgi._domain.image_jobs import JobPayload, JobRecord, new_job_id
from mesh_images_asgi._routing.job_redis import CLIENT_NAME, RedisJobQueue
from tests.support.live import serve
from tests.support.redis import (
    free_port,
    redis_for_tests,
)

pytestmark = pytest.mark.anyio

PAYLOAD = JobPayload("/v1/images/generations", "application/json", b"{}", "req_1")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """CI's Redis when there is one, else a Redis of this module's own."""
    with redis_for_tests() as url:
        yield url


def queue(
    url: str, prefix: str, size: int = 10, max_connections: int = 50, pool_timeout: float = 2.0
) -> RedisJobQueue:
    return RedisJobQueue(
        url,
        concurrency=1,
        size=size,
        lease=60,
        ttl=60,
        prefix=prefix,
        max_connections=max_connections,
        pool_timeout=pool_timeout,
    )


async def test_the_first_result_wins(redis_url: str) -> None:
    jobs = queue(redis_url, f"test-records:{secrets.token_hex(4)}")
    try:
        record = JobRecord(new_job_id(), "local/sketch", None)
        await jobs.submit(record, PAYLOAD)
        first = await jobs.finish(record, "succeeded", {"data": ["first"]})
        second = await jobs.finish(record, "succeeded", {"data": ["second"]})
        assert first is not None
        assert second is None
        stored = await jobs.get(record.id)
        assert stored is not None
        assert stored.status == "succeeded"
        assert stored.result == {"data": ["first"]}
        cancelled = await jobs.cancel(record.id)  # too late: nothing changes
        assert cancelled is not None
        assert cancelled.status == "succeeded"
    finally:
        await jobs.aclose()


async def test_a_cancelled_job_keeps_no_later_result(redis_url: str) -> None:
    jobs = queue(redis_url, f"test-records:{secrets.token_hex(4)}")
    try:
        record = JobRecord(new_job_id(), "local/sketch", "team-a")
        await jobs.submit(record, PAYLOAD)
        cancelled = await jobs.cancel(record.id)
        assert cancelled is not None
        assert cancelled.status == "cancelled"
        assert cancelled.owner == "team-a"
        assert await jobs.finish(record, "succeeded", {"data": []}) is None
        stored = await jobs.get(record.id)
        assert stored is not None
        assert (stored.status, stored.result) == ("cancelled", None)
    finally:
        await jobs.aclose()


async def test_the_queue_bound_is_shared_by_every_submitter(redis_url: str) -> None:
    prefix = f"test-records:{secrets.token_hex(4)}"
    one, two = queue(redis_url, prefix, size=2), queue(redis_url, prefix, size=2)
    try:
        await one.submit(JobRecord(new_job_id(), "local/sketch", None), PAYLOAD)
        await two.submit(JobRecord(new_job_id(), "local/sketch", None), PAYLOAD)
        with pytest.raises(ProviderNotAvailable) as refused:
            await one.submit(JobRecord(new_job_id(), "local/sketch", None), PAYLOAD)
        assert refused.value.retry_after_seconds is not None
    finally:
        await one.aclose()
        await two.aclose()


def test_a_gateway_starts_and_refuses_jobs_clearly_while_redis_is_down() -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = ImagesApp(Settings(redis_url=down, local_latency=0))
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/v1/models").status_code == 200
        answer = http.post(
            "/v1/async/images/generations", json={"model": "local/sketch", "prompt": "x"}
        )
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "provider_not_available"
        assert "retry-after" in answer.headers


async def _clients(redis: Any) -> list[dict[str, Any]]:
    return list(await redis.client_list())


async def test_a_burst_of_polls_shares_a_bounded_pool_of_connections(redis_url: str) -> None:
    """200 polls at once on a pool of 3 (``MESH_IMAGES_REDIS_MAX_CONNECTIONS``) wait their turn,
    none refused, and Redis sees at most 3 more connections (redis-py's default pool opened up
    to 100, then refused the rest at once, which read as Redis being down)."""
    from redis import asyncio as aioredis

    observer: Any = aioredis.Redis.from_url(redis_url)
    before = len(await _clients(observer))
    jobs = queue(
        redis_url,
        f"test-records:{secrets.token_hex(4)}",
        max_connections=3,
        pool_timeout=60,  # only catches a hang
    )
    try:
        record = JobRecord(new_job_id(), "local/sketch", None)
        await jobs.submit(record, PAYLOAD)
        polls = await asyncio.gather(*(jobs.get(record.id) for _ in range(200)))
        assert {poll.id if poll else None for poll in polls} == {record.id}
        after = await _clients(observer)
        assert len(after) - before <= 3, after
        assert 1 <= sum(client["name"] == CLIENT_NAME for client in after) <= 3, after
    finally:
        await jobs.aclose()
        await observer.aclose()


async def test_a_poll_that_finds_every_connection_busy_is_refused_as_busy(redis_url: str) -> None:
    """The pool's one connection is held by a submission that Redis keeps waiting (``CLIENT
    PAUSE WRITE`` holds scripts that write); a poll waits ``pool_timeout`` for it, then gets 503
    ``service_unavailable`` (Retry-After 1 s), not "Redis is down"."""
    from redis import asyncio as aioredis

    observer: Any = aioredis.Redis.from_url(redis_url)
    jobs = queue(
        redis_url,
        f"test-records:{secrets.token_hex(4)}",
        max_connections=1,
        pool_timeout=0.05,
    )
    record = JobRecord(new_job_id(), "local/sketch", None)
    try:
        assert await jobs.get(record.id) is None  # the pool's one connection, open
        await observer.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            # Tasks start in order, and a free connection is taken before the first await
            # that suspends: the submission holds it, the poll waits for it.
            held = asyncio.create_task(jobs.submit(record, PAYLOAD))
            waiting = asyncio.create_task(jobs.get(record.id))
            with pytest.raises(ServiceUnavailable) as refused:
                await waiting
        finally:
            await observer.execute_command("CLIENT", "UNPAUSE")
        assert refused.value.retry_after_seconds == 1.0
        await held  # the submission goes through once Redis goes on
        stored = await jobs.get(record.id)
        assert stored is not None
        assert stored.status == "queued"
    finally:
        await jobs.aclose()
        await observer.aclose()
