"""Async image jobs: the record of one job and the interface of the queues that hold them.

A job is a request accepted now and served later: the submission is validated like the
synchronous route's (``_asgi.job_routes``), then its raw body is queued with the caller's key
label; a worker runs it through the very same service path and keeps the synchronous answer's
body as ``result``, or the error object as ``error``. Two queues implement ``JobQueue``:
``_routing.job_memory`` (in the process, the default) and ``_routing.job_redis`` (Redis Streams,
every gateway process a worker).

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed``; ``queued``/``running`` ->
``cancelled`` (``DELETE``). A finished job never changes again: the first result wins.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import orjson

__all__ = [
    "FINISHED",
    "JobEnded",
    "JobOutcome",
    "JobPayload",
    "JobQueue",
    "JobRecord",
    "JobRunner",
    "JobStatus",
    "new_job_id",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def new_job_id() -> str:
    """``job_`` and 128 random bits: unguessable, so an id alone reveals nothing."""
    return "job_" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class JobPayload:
    """What a worker needs to serve the job again from scratch: the submission as it came."""

    route: str
    """The synchronous route whose handler serves it (``/v1/images/generations``...)."""
    content_type: str
    body: bytes
    request_id: str
    """The submission's request id (the job's access log line carries it)."""
    base: str = ""
    """The submission's public base URL (``http://host/root/``), for hosted image URLs."""

    def meta(self) -> bytes:
        """Everything but the body, as JSON (the body is stored as it is, beside it)."""
        return orjson.dumps({name: value for name, value in asdict(self).items() if name != "body"})

    @classmethod
    def of(cls, meta: bytes, body: bytes) -> JobPayload:
        return cls(body=body, **orjson.loads(meta))


@dataclass(slots=True)
class JobRecord:
    """One job's state. ``owner`` (the gateway key's label, None without keys) is never shown."""

    id: str
    model: str
    owner: str | None
    submitted: float = field(default_factory=time.time)
    created: int = 0
    status: JobStatus = "queued"
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    started: float | None = None
    """Wall-clock time the (last) run started."""
    finished: float | None = None
    webhook: str | None = None
    """Where to POST the job when it ends (``_routing.webhooks``); never shown."""

    def __post_init__(self) -> None:
        if not self.created:
            self.created = int(self.submitted)

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def public(self) -> dict[str, Any]:
        """The ``image.job`` object of the API."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "image.job",
            "status": self.status,
            "created": self.created,
            "model": self.model,
        }
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        return body

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes | str) -> JobRecord:
        return cls(**orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a run ended: ``succeeded`` with the answer's body, or ``failed`` with the error."""

    status: Literal["succeeded", "failed"]
    body: dict[str, Any]


JobRunner = Callable[[JobRecord, JobPayload], Coroutine[Any, Any, JobOutcome]]
"""Serves one job (the app's; raises ``CancelledError`` when the job is cancelled)."""
JobEnded = Callable[[JobRecord], None]
"""Told of a run's end when it won (the job's first end): metrics, webhooks."""


class JobQueue(Protocol):
    """Where jobs wait, run and are kept until ``MESH_IMAGES_JOB_TTL`` has passed."""

    async def submit(self, record: JobRecord, payload: JobPayload) -> None:
        """Queue the job; 503 ``provider_not_available`` when the queue is full."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None when unknown or expired."""

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel the job unless finished; its record afterwards, or None when unknown."""

    async def start(self, runner: JobRunner, ended: JobEnded) -> None:
        """Start this process's workers (idempotent)."""

    def depth(self) -> int:
        """Jobs waiting for a worker (for Redis: as last seen by this process's workers)."""

    async def aclose(self) -> None:
        """Stop taking jobs, hand running ones back (or cut them, in memory), release resources."""
