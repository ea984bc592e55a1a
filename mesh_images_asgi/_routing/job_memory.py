"""The embedded job queue: in this process, bounded, served by this process's workers.

An ``asyncio.Queue`` of job ids and ``MESH_IMAGES_JOB_CONCURRENCY`` worker tasks; each job runs
in a task of its own, so that ``DELETE`` cancels it (and with it the upstream request). A restart
loses every job, queued or finished: ``job_redis`` is the queue that survives one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from mesh_images_asgi._core.errors import ProviderNotAvailable
from mesh_images_asgi._domain.image_jobs import (
    JobEnded,
    JobOutcome,
    JobPayload,
    JobRecord,
    JobRunner,
    JobStatus,
)

__all__ = ["MemoryJobQueue", "queue_full", "shut_down_error"]


def queue_full() -> ProviderNotAvailable:
    return ProviderNotAvailable(
        "The job queue is full; retry the submission later.", retry_after_seconds=5.0
    )


def shut_down_error() -> dict[str, Any]:
    """The error of a job the gateway's shutdown cut (only the embedded queue cuts jobs)."""
    return ProviderNotAvailable("The gateway shut down while the job ran.").error_object()


class MemoryJobQueue:
    """The in-process ``JobQueue`` (``clock``: wall-clock seconds, injectable for TTL tests)."""

    def __init__(
        self,
        *,
        concurrency: int,
        size: int,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._concurrency = concurrency
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._records: dict[str, JobRecord] = {}
        self._payloads: dict[str, JobPayload] = {}
        self._expires: dict[str, float] = {}
        self._waiting: asyncio.Queue[str] = asyncio.Queue()
        self._running: dict[str, asyncio.Task[JobOutcome]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._next_purge = 0.0

    def depth(self) -> int:
        return self._waiting.qsize()

    async def submit(self, record: JobRecord, payload: JobPayload) -> None:
        self._purge()
        if len(self._payloads) >= self._size:
            raise queue_full()
        self._records[record.id] = record
        self._payloads[record.id] = payload
        self._expires[record.id] = self._clock() + self._ttl
        self._waiting.put_nowait(record.id)

    async def get(self, job_id: str) -> JobRecord | None:
        expires = self._expires.get(job_id)
        if expires is not None and expires <= self._clock():
            self._forget(job_id)
        return self._records.get(job_id)

    async def cancel(self, job_id: str) -> JobRecord | None:
        record = await self.get(job_id)
        if record is None or record.done:
            return record
        self._finish(record, "cancelled")
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        return record

    async def start(self, runner: JobRunner, ended: JobEnded) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(
                    self._work(runner, ended), name=f"mesh-images-job-worker-{number}"
                )
                for number in range(self._concurrency)
            ]

    async def aclose(self) -> None:
        """Stop the workers; a running job is cut and fails (nothing outlives the process)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def _purge(self) -> None:
        """Forget expired jobs (a sweep at most once a second: polls must stay O(1))."""
        now = self._clock()
        if now < self._next_purge:
            return
        self._next_purge = now + 1
        for job_id in [job_id for job_id, at in self._expires.items() if at <= now]:
            self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        task = self._running.pop(job_id, None)
        if task is not None:
            task.cancel()
        del self._expires[job_id], self._records[job_id]
        self._payloads.pop(job_id, None)

    def _finish(
        self, record: JobRecord, status: JobStatus, body: dict[str, Any] | None = None
    ) -> None:
        record.status = status
        record.finished = self._clock()
        if status == "succeeded":
            record.result = body
        elif status == "failed":
            record.error = body
        self._payloads.pop(record.id, None)
        self._expires[record.id] = record.finished + self._ttl

    async def _work(self, runner: JobRunner, ended: JobEnded) -> None:
        while True:
            job_id = await self._waiting.get()
            record = self._records.get(job_id)
            payload = self._payloads.get(job_id)
            if record is None or payload is None or record.done:
                continue  # cancelled or expired while it waited
            record.status, record.started = "running", self._clock()
            task = asyncio.create_task(runner(record, payload))
            self._running[job_id] = task
            try:
                outcome = await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    task.cancel()
                    await asyncio.wait([task])
                    if not record.done:
                        self._finish(record, "failed", shut_down_error())
                    raise
                continue  # the job was cancelled (DELETE) or expired
            finally:
                self._running.pop(job_id, None)
            if not record.done:
                self._finish(record, outcome.status, outcome.body)
                ended(record)
