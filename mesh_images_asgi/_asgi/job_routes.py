"""The async job routes and the job runner, on top of the app (``handler.JobsHost``: an
``ImagesApp``) and a ``JobQueue``.

    POST   /v1/async/images/generations   (one async route per synchronous image route)
    GET    /v1/async/jobs/{id}
    DELETE /v1/async/jobs/{id}

A submission goes through the synchronous route's own steps (``ImagesApp.admit``, the route's
reader, ``ImagesApp.plan``): a bad request is the same 4xx, never a job. The bytes the reader
consumed are queued as they came; a worker replays them through the same reader and serves the
plan as the synchronous route does (``ImagesApp.answer``), so ``result`` is that route's body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from mesh_images_asgi._asgi.handler import Handler, JobsHost
from mesh_images_asgi._asgi.hosted import request_base
from mesh_images_asgi._asgi.responses import send_json
from mesh_images_asgi._core.asgi import (
    Message,
    Receive,
    Scope,
    Send,
    get_header,
    route_path,
)
from mesh_images_asgi._core.errors import GatewayError, InternalError, InvalidRequest, NotFound
from mesh_images_asgi._domain.image_jobs import (
    JobOutcome,
    JobPayload,
    JobQueue,
    JobRecord,
    new_job_id,
)
from mesh_images_asgi._observe.outcome import CLIENT_CLOSED, Outcome
from mesh_images_asgi._routing.byok import read_client_keys
from mesh_images_asgi._routing.job_queues import create_job_queue
from mesh_images_asgi._routing.webhooks import WEBHOOK_HEADER, Webhooks

__all__ = ["ASYNC_PREFIX", "JOBS_PREFIX", "JOB_PATH", "JobRoutes", "async_path"]

logger = logging.getLogger("mesh_images_asgi")

ASYNC_PREFIX = "/v1/async"
JOBS_PREFIX = "/v1/async/jobs/"
JOB_PATH = "/v1/async/jobs/{id}"
_JSON = b"application/json"


def async_path(path: str) -> str:
    """The async route of a synchronous one: ``/v1/images/x`` -> ``/v1/async/images/x``."""
    return ASYNC_PREFIX + path.removeprefix("/v1")


class _Recorder:
    """A ``receive`` that keeps the request body's bytes as the reader consumes them."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.chunks: list[bytes] = []

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.chunks.append(message.get("body", b""))
        return message


def _replay(body: bytes) -> Receive:
    """A ``receive`` giving ``body`` in one message, then a disconnect."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop() if messages else {"type": "http.disconnect"}

    return receive


def _job_scope(payload: JobPayload) -> Scope:
    """The scope a job's reader sees: its route, its body's type and length."""
    return {
        "type": "http",
        "method": "POST",
        "path": payload.route,
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", payload.content_type.encode("latin-1")),
            (b"content-length", str(len(payload.body)).encode()),
        ],
    }


class JobRoutes:
    """Adds the async routes to ``routes`` and serves them; owns the app's ``JobQueue``."""

    def __init__(
        self, app: JobsHost, queue: JobQueue | None, routes: dict[str, dict[str, Handler]]
    ) -> None:
        self._app = app
        self._queue = queue
        self._started = False
        secret = app.settings.job_webhook_secret
        self._webhooks = Webhooks(
            app.settings.job_webhook_hosts,
            secret.get_secret_value().encode() if secret is not None else None,
        )
        for path in app.readers:
            routes[async_path(path)] = {"POST": self._submitter(path)}
        routes[JOB_PATH] = {"GET": self._handler(self._get), "DELETE": self._handler(self._cancel)}

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            self._queue = create_job_queue(self._app.settings)
        return self._queue

    def route(self, path: str) -> str | None:
        """``JOB_PATH`` for a job's path, else None."""
        if path.startswith(JOBS_PREFIX) and len(path) > len(JOBS_PREFIX):
            return JOB_PATH
        return None

    def depth(self) -> int:
        return self._queue.depth() if self._queue is not None else 0

    async def start(self) -> None:
        """Start this process's workers (at lifespan startup, or at the first submission)."""
        if not self._started:
            await self.queue.start(self._run, self._ended)
            self._started = True

    async def aclose(self) -> None:
        if self._queue is not None and self._started:
            self._started = False
            await self._queue.aclose()
        await self._webhooks.aclose()

    # The routes.

    def _handler(self, serve: Callable[[Scope, Send, Outcome], Awaitable[None]]) -> Handler:
        async def handler(scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
            await serve(scope, send, outcome)

        return handler

    def _submitter(self, path: str) -> Handler:
        async def submit(scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
            await self._submit(path, scope, receive, send, outcome)

        return submit

    async def _submit(
        self, path: str, scope: Scope, receive: Receive, send: Send, outcome: Outcome
    ) -> None:
        app = self._app
        app.check_open()
        key, send = await app.admit(scope, send, outcome)
        webhook = self._webhooks.check(get_header(scope, WEBHOOK_HEADER))
        recorder = _Recorder(receive)
        request, inputs = await app.readers[path](scope, recorder)
        if request.stream:
            raise InvalidRequest(
                "An async job is not streamed: poll GET /v1/async/jobs/{id} for its result.",
                param="stream",
            )
        if read_client_keys(scope):
            raise InvalidRequest(
                "Async jobs run on the gateway's provider credentials: a client's own provider "
                "key is never stored in a queue. Use the synchronous route with it."
            )
        plan = app.plan(request, key, outcome, inputs)
        await self.start()
        record = JobRecord(new_job_id(), plan.job.entry.id, key.label if key else None)
        record.webhook = webhook
        content_type = (get_header(scope, b"content-type") or b"application/json").decode("latin-1")
        body = b"".join(recorder.chunks)
        payload = JobPayload(path, content_type, body, outcome.request_id, request_base(scope))
        await self.queue.submit(record, payload)
        app.job_metrics.jobs.labels("queued").inc()
        location = f"{scope.get('root_path', '')}{JOBS_PREFIX}{record.id}".encode()
        outcome.status, outcome.job = 202, record.id
        outcome.bytes = await send_json(
            send, 202, record.public(), outcome.request_id, [(b"location", location)]
        )

    async def _owned(self, scope: Scope, outcome: Outcome) -> JobRecord:
        """The job of this path, if the caller's key made it; else 404 ``not_found``."""
        key = self._app.caller(scope, outcome)
        job_id = route_path(scope)[len(JOBS_PREFIX) :]
        record = await self.queue.get(job_id)
        if record is None or record.owner != (key.label if key else None):
            raise NotFound(f"No job {job_id!r} here (unknown, expired, or another key's).")
        return record

    async def _get(self, scope: Scope, send: Send, outcome: Outcome) -> None:
        record = await self._owned(scope, outcome)
        outcome.bytes = await send_json(send, 200, record.public(), outcome.request_id)

    async def _cancel(self, scope: Scope, send: Send, outcome: Outcome) -> None:
        record = await self._owned(scope, outcome)
        was_done = record.done
        cancelled = await self.queue.cancel(record.id)
        if cancelled is None:
            raise NotFound(f"No job {record.id!r} here (unknown, expired, or another key's).")
        if not was_done and cancelled.status == "cancelled":
            self._app.job_metrics.jobs.labels("cancelled").inc()
        outcome.bytes = await send_json(send, 200, cancelled.public(), outcome.request_id)

    # The runner.

    async def _run(self, record: JobRecord, payload: JobPayload) -> JobOutcome:
        """Serve one job as its synchronous route would; its record is the run's log line."""
        app = self._app
        scope = _job_scope(payload)
        metrics = app.job_metrics
        outcome = app.observe_job(scope, async_path(payload.route), payload.request_id)
        outcome.key, outcome.job = record.owner, record.id
        started = time.monotonic()
        if record.started is not None:
            metrics.queued_seconds.observe(max(0.0, record.started - record.submitted))
        try:
            key = app.key_named(record.owner)
            app.set_request_base(payload.base)
            request, inputs = await app.readers[payload.route](scope, _replay(payload.body))
            plan = app.plan(request, key, outcome, inputs)
            body, _ = app.answer(await app.service.generate(plan), outcome)
            result = JobOutcome("succeeded", body)
        except GatewayError as error:
            outcome.failed(error)
            result = JobOutcome("failed", error.error_object())
        except Exception:
            outcome.fail(500, "internal_error")
            logger.exception("mesh-images: job %s failed unexpectedly", record.id)
            result = JobOutcome("failed", InternalError("Internal error.").error_object())
        except asyncio.CancelledError:
            outcome.fail(CLIENT_CLOSED, "cancelled")
            raise
        finally:
            metrics.running_seconds.observe(time.monotonic() - started)
            app.finish_job(outcome)
        return result

    def _ended(self, record: JobRecord) -> None:
        self._app.job_metrics.jobs.labels(record.status).inc()
        self._webhooks.deliver(record)
