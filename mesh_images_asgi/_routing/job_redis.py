"""Jobs in Redis: a stream with a consumer group, every gateway process a worker.

Why Redis Streams through redis-py rather than a queue library (``docs/jobs.md`` has the long
form): the guarantees we need are the stream's own. A consumer group delivers each entry to one
consumer and keeps it *pending* until acknowledged, so a dead worker loses nothing;
``XAUTOCLAIM`` hands an entry idle longer than the lease to a live worker; a worker renews its
lease by ``XCLAIM``-ing its own entries (which resets their idle time). "First result wins" is one
small Lua script. ``arq`` has no lease to renew (a job outliving its fixed expiry runs twice at
once) and ``saq``/``taskiq`` bring their own job records, states and worker processes, beside
which we would still write ownership, first-result-wins and our ``image.job`` states.

Keys under ``MESH_IMAGES_JOB_REDIS_PREFIX`` (default ``mesh-images:jobs``): ``:stream`` (entries
``job=<id>``, group ``workers``; an entry is deleted once acknowledged, so the stream's length is
the unfinished jobs), and ``:job:<id>``, a hash of ``status``, ``record`` (``JobRecord`` JSON)
and, until it finishes, ``payload`` (``JobPayload.meta``) and ``body`` (the request body as it
came); it expires ``MESH_IMAGES_JOB_TTL`` after submission, and
again after finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import replace
from typing import Any

from mesh_images_asgi._access.ratelimit import pool_exhausted
from mesh_images_asgi._core.errors import GatewayError, ProviderNotAvailable, ServiceUnavailable
from mesh_images_asgi._domain.image_jobs import (
    JobEnded,
    JobPayload,
    JobRecord,
    JobRunner,
    JobStatus,
)
from mesh_images_asgi._routing.job_memory import queue_full

__all__ = ["RedisJobQueue"]

logger = logging.getLogger("mesh_images_asgi")

_GROUP = "workers"
_CANCEL_POLL = 0.2
"""Seconds between a running job's looks at its status (a DELETE on any replica cancels it)."""

_SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'status', 'queued', 'record', ARGV[3], 'payload', ARGV[4],
  'body', ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
return 1
"""
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return false end
redis.call('HSET', KEYS[1], 'status', 'running', 'record', ARGV[1])
return redis.call('HMGET', KEYS[1], 'payload', 'body')
"""
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'record', ARGV[2])
redis.call('HDEL', KEYS[1], 'payload', 'body')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
_HAND_BACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], 'status') == 'running' then
  redis.call('HSET', KEYS[2], 'status', 'queued', 'record', ARGV[4])
  redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
end
return 1
"""


CLIENT_NAME = "mesh-images-jobs"
"""The name the queue's connections give Redis (``CLIENT LIST`` shows it)."""


def _redis_client(url: str, max_connections: int, pool_timeout: float) -> Any:
    """A client on a blocking pool of at most ``max_connections`` connections: under a burst of
    polls a call waits up to ``pool_timeout`` s for one (then 503, as when Redis is down),
    where redis-py's default pool would open a connection per concurrent call."""
    try:
        from redis import asyncio as aioredis
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "MESH_IMAGES_REDIS_URL needs the redis client: pip install 'mesh-images-asgi[redis]'"
        ) from None
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
        client_name=CLIENT_NAME,
    )
    return aioredis.Redis.from_pool(pool)


def _unreachable() -> ProviderNotAvailable:
    return ProviderNotAvailable(
        "The job store (Redis) cannot be reached; retry later.", retry_after_seconds=5.0
    )


def _refusal(exc: BaseException) -> GatewayError:
    """What a job call that Redis failed answers: 503 ``service_unavailable`` when every pooled
    connection stayed busy for ``redis_pool_timeout`` (a burst, as the rate limiter says it),
    else 503 ``provider_not_available`` (Redis down)."""
    if pool_exhausted(exc):
        return ServiceUnavailable(
            "The gateway is busy with job requests; try again shortly.", retry_after_seconds=1.0
        )
    return _unreachable()


class RedisJobQueue:
    """The Redis ``JobQueue``; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        concurrency: int,
        size: int,
        lease: float,
        ttl: float,
        prefix: str = "mesh-images:jobs",
        max_connections: int = 50,
        pool_timeout: float = 2.0,
    ) -> None:
        from redis.exceptions import RedisError

        self._client = _redis_client(url, max_connections, pool_timeout)
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._size = size
        self._lease = lease
        self._ttl = max(1, int(ttl))
        self._prefix = prefix
        self._stream = f"{prefix}:stream"
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._submit = self._client.register_script(_SUBMIT)
        self._start = self._client.register_script(_START)
        self._finish = self._client.register_script(_FINISH)
        self._hand_back = self._client.register_script(_HAND_BACK)
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._depth = 0
        self._depth_at = 0.0
        self._next_sweep = 0.0
        self._group_ready = False
        self._ended: JobEnded = lambda record: None

    def _key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    def depth(self) -> int:
        return self._depth

    async def submit(self, record: JobRecord, payload: JobPayload) -> None:
        try:
            added = await self._submit(
                keys=[self._stream, self._key(record.id)],
                args=[
                    *(self._size, record.id, record.dumps(), payload.meta(), self._ttl),
                    payload.body,
                ],
            )
        except self._errors as exc:
            logger.warning("mesh-images: Redis unreachable or busy; a job submission was refused")
            raise _refusal(exc) from None
        if not added:
            raise queue_full()

    async def get(self, job_id: str) -> JobRecord | None:
        try:
            raw = await self._client.hget(self._key(job_id), "record")
        except self._errors as exc:
            raise _refusal(exc) from None
        return None if raw is None else JobRecord.loads(raw)

    async def cancel(self, job_id: str) -> JobRecord | None:
        record = await self.get(job_id)
        if record is None or record.done:
            return record
        try:
            await self.finish(record, "cancelled")
        except self._errors as exc:
            raise _refusal(exc) from None
        return await self.get(job_id)  # the running worker sees it within _CANCEL_POLL

    async def finish(
        self, record: JobRecord, status: JobStatus, body: dict[str, Any] | None = None
    ) -> JobRecord | None:
        """End an unfinished job (with ``body`` as its result or error); its record, or None
        when it had ended already: the first end wins."""
        finished = replace(record, status=status, finished=time.time())
        if status == "succeeded":
            finished.result = body
        elif status == "failed":
            finished.error = body
        ended = await self._finish(
            keys=[self._key(record.id)], args=[status, finished.dumps(), self._ttl]
        )
        return finished if ended else None

    async def start(self, runner: JobRunner, ended: JobEnded) -> None:
        if self._loop is None:  # the loop makes the group: Redis may be down at startup
            self._ended = ended
            self._loop = asyncio.create_task(self._consume(runner), name="mesh-images-jobs")

    async def aclose(self) -> None:
        """Stop taking jobs; cancel the running ones and put them back on the stream at once."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self._client.aclose()

    async def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self._client.xgroup_create(self._stream, _GROUP, id="0", mkstream=True)

    async def _consume(self, runner: JobRunner) -> None:
        lease_ms = int(self._lease * 1000)
        while True:
            await self._slots.acquire()
            try:
                entry = await self._next(lease_ms)
            except self._errors:
                self._slots.release()
                self._group_ready = False  # a restarted Redis may have lost it
                logger.warning("mesh-images: Redis unreachable; the job worker retries in 1 s")
                await asyncio.sleep(1)
                continue
            except BaseException:
                self._slots.release()
                raise
            if entry is None:
                self._slots.release()
                continue
            entry_id, job_id = entry
            task = asyncio.create_task(self._serve(runner, entry_id, job_id))
            self._running[entry_id] = task
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        for entry_id, running in list(self._running.items()):
            if running is task:
                del self._running[entry_id]
        self._slots.release()

    async def _next(self, lease_ms: int) -> tuple[str, str] | None:
        """One entry for this worker: a dead worker's past its lease first (looked for every
        quarter lease, and again at once after one was found), else a new one."""
        if not self._group_ready:
            await self._ensure_group()
            self._group_ready = True
        claimed = []
        if time.monotonic() >= self._next_sweep:
            _, claimed, *_ = await self._client.xautoclaim(
                self._stream, _GROUP, self._consumer, lease_ms, "0-0", count=1
            )
            self._next_sweep = time.monotonic() + (0 if claimed else self._lease / 4)
        if not claimed:
            await self._refresh_depth()
            read = await self._client.xreadgroup(
                _GROUP, self._consumer, {self._stream: ">"}, count=1, block=1000
            )
            claimed = read[0][1] if read else []
        for entry_id, fields in claimed:
            if fields:  # an entry deleted meanwhile comes back without fields
                return _text(entry_id), _text(fields[b"job"])
            await self._client.xack(self._stream, _GROUP, entry_id)
        return None

    async def _refresh_depth(self) -> None:
        now = time.monotonic()
        if now - self._depth_at < 1:
            return
        self._depth_at = now
        length = await self._client.xlen(self._stream)
        pending = await self._client.xpending(self._stream, _GROUP)
        self._depth = max(0, length - int(pending["pending"]))

    async def _serve(self, runner: JobRunner, entry_id: str, job_id: str) -> None:
        """Run one entry's job; with Redis unreachable, leave the entry pending (another worker
        takes it up after the lease)."""
        try:
            await self._run_entry(runner, entry_id, job_id)
        except self._errors:
            logger.warning("mesh-images: Redis unreachable; job %s is left to its lease", job_id)

    async def _run_entry(self, runner: JobRunner, entry_id: str, job_id: str) -> None:
        key = self._key(job_id)
        raw = await self._client.hget(key, "record")
        record = None if raw is None else JobRecord.loads(raw)
        started: list[bytes] | None = None
        if record is not None and not record.done:
            record = replace(record, status="running", started=time.time())
            started = await self._start(keys=[key], args=[record.dumps()])
        if record is None or not started:  # expired, cancelled or finished meanwhile
            await self._ack(entry_id)
            return
        run = asyncio.create_task(runner(record, JobPayload.of(*started)))
        watch = asyncio.create_task(self._watch(entry_id, key, run))
        try:
            outcome = await run
        except asyncio.CancelledError:
            run.cancel()
            watch.cancel()
            await asyncio.gather(run, watch, return_exceptions=True)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # shutdown: hand the job back
                queued = replace(record, status="queued", started=None)
                with contextlib.suppress(*self._errors):
                    await self._hand_back(
                        keys=[self._stream, key], args=[_GROUP, entry_id, job_id, queued.dumps()]
                    )
                raise
            await self._ack(entry_id)  # cancelled by DELETE: the record says so already
            return
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        finished = await self.finish(record, outcome.status, outcome.body)
        await self._ack(entry_id)
        if finished is not None:
            self._ended(finished)

    async def _ack(self, entry_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, _GROUP, entry_id)
            pipe.xdel(self._stream, entry_id)
            await pipe.execute()

    async def _watch(self, entry_id: str, key: str, run: asyncio.Task[Any]) -> None:
        """While the job runs: renew its lease, and cancel it when its status leaves running."""
        renew_every = self._lease / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(_CANCEL_POLL)
            try:
                if await self._client.hget(key, "status") != b"running":
                    run.cancel()
                    return
                if time.monotonic() - renewed >= renew_every:
                    await self._client.xclaim(
                        self._stream, _GROUP, self._consumer, 0, [entry_id], justid=True
                    )
                    renewed = time.monotonic()
            except self._errors:
                logger.warning("mesh-images: Redis unreachable while job %s runs", key)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
