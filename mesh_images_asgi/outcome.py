"""What one request came to: a small record filled along the way and observed once at the end.

    app.py      start (route, request id, the request span), key label, the plan, status, bytes
    routing.py  each upstream attempt (model, provider, time, error; its span), retries
    sse.py      open streams, pings, the stream's end (its error event, or the client leaving)
    app.py      finish: metrics (``metrics.py``), the span's end (``tracing.py``), and the
                access log line (``accesslog.py``), once

The app makes the record current in a context variable, which child tasks (the stream's producer)
share, so the router and the stream writer find it without new parameters; code that runs outside
an app (the router in tests) gets a detached record that observes nothing. Requests to quiet routes
(``/healthz``, ``/metrics``) are neither counted nor logged.

Costs stay small: with tracing off and the access log disabled, a request pays one object, a
context variable set and reset, two clock reads and a handful of cached metric children.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from contextvars import ContextVar, Token
from decimal import Decimal
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import accesslog
from ._asgi import Scope
from .cost import estimate
from .errors import GatewayError
from .metrics import Metrics
from .tracing import Tracing

if TYPE_CHECKING:
    from .providers.base import GenerationJob, ProviderResult
    from .routing import Plan, Routed
    from .tracing import Active

__all__ = ["CLIENT_CLOSED", "UNMATCHED", "Observer", "Outcome", "current_outcome"]

logger = logging.getLogger("mesh_images_asgi")

UNMATCHED = "unmatched"
"""The ``route`` of a request for a path we do not serve (a bounded label, not the path)."""
CLIENT_CLOSED = 499
"""The status recorded when the client left before its answer was complete (nginx's)."""

_PROVIDER_CODES = frozenset(
    {
        "bad_response",
        "connection_error",
        "internal_provider_error",
        "model_not_found",
        "provider_overloaded",
        "provider_timeout",
    }
)
"""Our own ``provider_code`` values, precise enough to name an attempt's outcome."""

_current: ContextVar[Outcome] = ContextVar("mesh_images_outcome")


def current_outcome() -> Outcome:
    """The current request's record, or a detached one outside a request."""
    outcome = _current.get(None)
    return outcome if outcome is not None else Outcome(None, UNMATCHED, "", "")


def attempt_outcome(error: BaseException | None) -> str:
    """An attempt's ``outcome`` label: ``ok``, our provider code, the error code, ``cancelled``."""
    if error is None:
        return "ok"
    if isinstance(error, GatewayError):
        code = error.provider_code
        return code if code in _PROVIDER_CODES else error.code
    return "internal_error" if isinstance(error, Exception) else "cancelled"


class Observer:
    """One per app: starts each request's ``Outcome`` and observes it when it is finished."""

    def __init__(
        self,
        metrics: Metrics,
        tracing: Tracing,
        routes: Collection[str],
        *,
        quiet: Collection[str] = (),
        log_prompts: bool = False,
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.log_prompts = log_prompts
        self._routes = routes
        self._quiet = quiet
        accesslog.install()

    def start(self, scope: Scope, path: str, request_id: str) -> Outcome:
        """A record for this HTTP request (``path``: its route path, ``_asgi.route_path``), made
        current (with its span when tracing is on)."""
        route = path if path in self._routes else UNMATCHED
        outcome = Outcome(self, route, request_id, scope.get("method", ""))
        outcome.quiet = route in self._quiet
        outcome._token = _current.set(outcome)
        tracing = self.tracing
        if tracing.pending:
            tracing.resolve()
        if tracing.tracer is not None and not outcome.quiet:
            outcome._span = tracing.start_request(scope, route if route != UNMATCHED else None)
        return outcome

    def finish(self, outcome: Outcome) -> None:
        """Observe ``outcome`` once: its span, its metrics, its log line."""
        total = perf_counter() - outcome.started
        try:
            if outcome._span is not None:
                active, outcome._span = outcome._span, None
                self.tracing.end_request(active, outcome)
            if not outcome.quiet:
                self.metrics.record(outcome, total)
                if accesslog.enabled():
                    accesslog.write(outcome, total)
        except Exception:
            logger.exception("mesh-images: observing request %s failed", outcome.request_id)
        finally:
            if outcome._token is not None:
                _current.reset(outcome._token)
                outcome._token = None


class Outcome:
    """The record of one request (see the module docstring for who fills what)."""

    __slots__ = (
        "_span",
        "_token",
        "attempts",
        "billing",
        "bytes",
        "cost",
        "error",
        "fallback",
        "images",
        "key",
        "method",
        "model",
        "n",
        "observer",
        "pings",
        "prompt",
        "provider",
        "provider_code",
        "quiet",
        "request_id",
        "requested",
        "route",
        "started",
        "status",
        "stream",
        "upstream",
        "usage",
    )

    def __init__(self, observer: Observer | None, route: str, request_id: str, method: str) -> None:
        self.observer = observer
        self.route = route
        self.request_id = request_id
        self.method = method
        self.started = perf_counter()
        self.quiet = False
        self.status = 200
        self.error: str | None = None
        self.provider_code: str | None = None
        self.key: str | None = None
        """The gateway key's label (never the key)."""
        self.requested: str | None = None
        """The requested model's catalog id, once the request is planned."""
        self.model = ""
        """The model that served (or was tried last, or was requested): a catalog id."""
        self.provider = ""
        self.stream = False
        self.n = 0
        self.attempts = 0
        self.fallback = False
        self.upstream = 0.0
        """Seconds spent in upstream attempts, all of them."""
        self.images = 0
        self.usage: Mapping[str, Any] | None = None
        self.cost: Decimal | None = None
        self.billing = "gateway"
        self.bytes = 0
        """Response body bytes written."""
        self.pings = 0
        self.prompt: str | None = None
        self._token: Token[Outcome] | None = None
        self._span: Active | None = None

    def fail(self, status: int, code: str, provider_code: str | None = None) -> None:
        """The request ended with this error (a response, or a stream's error event)."""
        self.status, self.error, self.provider_code = status, code, provider_code

    def failed(self, error: GatewayError) -> None:
        self.fail(error.status, error.code, error.provider_code)

    def planned(self, plan: Plan) -> None:
        """The request resolved to ``plan`` (its requested model)."""
        job = plan.job
        self.requested = self.model = job.entry.id
        self.provider = job.entry.provider
        self.stream = job.request.stream
        self.n = job.request.n
        if self.observer is not None and self.observer.log_prompts:
            self.prompt = job.request.prompt

    def attempt(self, job: GenerationJob) -> Attempt:
        """``with outcome.attempt(job) as attempt:`` around one upstream call."""
        return Attempt(self, job)

    def retried(self, job: GenerationJob) -> None:
        if self.observer is not None:
            self.observer.metrics.retries(job.entry.id).inc()

    def served(self, routed: Routed) -> Decimal | None:
        """The request was served by ``routed``; its estimated cost, when known."""
        self.fallback = routed.routing.fallback
        return self.cost

    def stream_opened(self) -> None:
        if self.observer is not None:
            self.observer.metrics.streams_open.inc()

    def stream_closed(self) -> None:
        if self.observer is not None:
            self.observer.metrics.streams_open.dec()

    def pinged(self) -> None:
        self.pings += 1
        if self.observer is not None:
            self.observer.metrics.pings.inc()


class Attempt:
    """One upstream attempt: timed, counted, traced; ``succeeded`` records its result."""

    __slots__ = ("_job", "_outcome", "_result", "_span", "_started")

    def __init__(self, outcome: Outcome, job: GenerationJob) -> None:
        self._outcome = outcome
        self._job = job
        self._result: ProviderResult | None = None
        self._span: Active | None = None
        self._started = 0.0

    def __enter__(self) -> Attempt:
        o, entry = self._outcome, self._job.entry
        o.attempts += 1
        o.model, o.provider = entry.id, entry.provider
        if o.observer is not None and o.observer.tracing.tracer is not None:
            self._span = o.observer.tracing.start_attempt(self._job, o.attempts)
        self._started = perf_counter()
        return self

    def succeeded(self, result: ProviderResult) -> ProviderResult:
        """Record the images, usage and cost of the attempt that served; returns ``result``."""
        o, job = self._outcome, self._job
        self._result = result
        o.images = len(result.images)
        o.usage = result.usage
        o.cost = estimate(job.entry, o.images, result.usage)
        o.billing = "gateway" if job.credentials is None else "client"
        return result

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        seconds = perf_counter() - self._started
        o, entry = self._outcome, self._job.entry
        o.upstream += seconds
        if o.observer is None:
            return
        label = attempt_outcome(exc)
        o.observer.metrics.upstream_duration(entry.id, entry.provider, label).observe(seconds)
        if self._span is not None:
            error = None if label == "ok" else label
            o.observer.tracing.end_attempt(self._span, self._result, error)
