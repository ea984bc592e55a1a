"""What one request came to: a small record filled along the way and observed once at the end.

    _asgi/app.py        start (route, request id, the request span), key label, the plan,
                        status, bytes
    _routing/router.py  each upstream attempt (model, provider, time, error; its span), retries
    _asgi/sse.py        open streams, pings, the stream's end (its error event, or the client
                        leaving)
    _asgi/app.py        finish: the observer (``observer.py``) turns the record into metrics,
                        the span's end and the access log line, once

This module is a record and nothing more: it imports no observer. What must happen *while* the
request runs (an attempt's span and timing, retry and ping counters, the open-streams gauge) goes
through the small ``Hooks`` protocol that the observer implements, so that the record sits at the
bottom of the import graph and everything above may fill it.

The app makes the record current in a context variable, which child tasks (the stream's producer)
share, so the router finds it without new parameters; code that runs outside an app (the router in
tests) gets a detached record that observes nothing. Requests to quiet routes (``/healthz``,
``/metrics``) are neither counted nor logged.

Costs stay small: with tracing off and the access log disabled, a request pays one object, a
context variable set and reset, two clock reads and a handful of cached metric children.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from decimal import Decimal
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from mesh_images_asgi._core.errors import GatewayError
from mesh_images_asgi._domain.cost import cost_of

if TYPE_CHECKING:
    from mesh_images_asgi._domain.jobs import GenerationJob, ProviderResult
    from mesh_images_asgi._domain.usage import Usage

__all__ = [
    "CLIENT_CLOSED",
    "UNMATCHED",
    "Attempt",
    "Hooks",
    "Outcome",
    "attempt_outcome",
    "current_outcome",
]


class Hooks(Protocol):
    """What a record reports while its request runs (``observer.Observer`` implements it)."""

    log_prompts: bool

    def retried(self, model: str) -> None: ...

    def stream_opened(self) -> None: ...

    def stream_closed(self) -> None: ...

    def pinged(self) -> None: ...

    def attempt_started(self, job: GenerationJob, number: int) -> object:
        """Start an attempt's span (or not); what it returns comes back to ``attempt_ended``."""
        ...

    def attempt_ended(
        self,
        job: GenerationJob,
        seconds: float,
        label: str,
        span: object,
        result: ProviderResult | None,
    ) -> None: ...


UNMATCHED = "unmatched"
"""The ``route`` of a request for a path we do not serve (a bounded label, not the path)."""
CLIENT_CLOSED = 499
"""The status recorded when the client left before its answer was complete (nginx's)."""

_PROVIDER_CODES = frozenset(
    {
        "bad_response",
        "certificate_error",
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


def make_current(outcome: Outcome) -> None:
    """Make ``outcome`` the current request's record (until ``release``)."""
    outcome._token = _current.set(outcome)


def release(outcome: Outcome) -> None:
    """Undo ``make_current``."""
    if outcome._token is not None:
        _current.reset(outcome._token)
        outcome._token = None


def attempt_outcome(error: BaseException | None) -> str:
    """An attempt's ``outcome`` label: ``ok``, our provider code, the error code, ``cancelled``."""
    if error is None:
        return "ok"
    if isinstance(error, GatewayError):
        code = error.provider_code
        return code if code in _PROVIDER_CODES else error.code
    return "internal_error" if isinstance(error, Exception) else "cancelled"


class Outcome:
    """The record of one request (see the module docstring for who fills what)."""

    __slots__ = (
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
        "span",
        "started",
        "status",
        "stream",
        "upstream",
        "usage",
    )

    def __init__(self, observer: Hooks | None, route: str, request_id: str, method: str) -> None:
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
        self.usage: Usage | None = None
        self.cost: Decimal | None = None
        self.billing = "gateway"
        self.bytes = 0
        """Response body bytes written."""
        self.pings = 0
        self.prompt: str | None = None
        self._token: Token[Outcome] | None = None
        self.span: object = None
        """The request's span while tracing is on (the observer's, opaque here)."""

    def fail(self, status: int, code: str, provider_code: str | None = None) -> None:
        """The request ended with this error (a response, or a stream's error event)."""
        self.status, self.error, self.provider_code = status, code, provider_code

    def failed(self, error: GatewayError) -> None:
        self.fail(error.status, error.code, error.provider_code)

    def planned(self, job: GenerationJob) -> None:
        """The request resolved to ``job`` (its requested model)."""
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
            self.observer.retried(job.entry.id)

    def served(self, fallback: bool) -> Decimal | None:
        """The request was served (by a fallback model or not); its estimated cost, when known."""
        self.fallback = fallback
        return self.cost

    def stream_opened(self) -> None:
        if self.observer is not None:
            self.observer.stream_opened()

    def stream_closed(self) -> None:
        if self.observer is not None:
            self.observer.stream_closed()

    def pinged(self) -> None:
        self.pings += 1
        if self.observer is not None:
            self.observer.pinged()


class Attempt:
    """One upstream attempt: timed, counted, traced; ``succeeded`` records its result."""

    __slots__ = ("_job", "_outcome", "_result", "_span", "_started")

    def __init__(self, outcome: Outcome, job: GenerationJob) -> None:
        self._outcome = outcome
        self._job = job
        self._result: ProviderResult | None = None
        self._span: object = None
        self._started = 0.0

    def __enter__(self) -> Attempt:
        o, entry = self._outcome, self._job.entry
        o.attempts += 1
        o.model, o.provider = entry.id, entry.provider
        if o.observer is not None:
            self._span = o.observer.attempt_started(self._job, o.attempts)
        self._started = perf_counter()
        return self

    def succeeded(self, result: ProviderResult) -> ProviderResult:
        """Record the images, usage and cost of the attempt that served; returns ``result``."""
        o, job = self._outcome, self._job
        self._result = result
        o.images = len(result.images)
        o.usage = result.usage
        o.cost = cost_of(job, result)
        o.billing = "gateway" if job.credentials is None else "client"
        return result

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        seconds = perf_counter() - self._started
        o = self._outcome
        o.upstream += seconds
        if o.observer is None:
            return
        o.observer.attempt_ended(self._job, seconds, attempt_outcome(exc), self._span, self._result)
