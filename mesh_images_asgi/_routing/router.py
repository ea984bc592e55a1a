"""Routing one generation: retries, fallbacks and BYOK fallback under one deadline.

The router tries the candidates of a ``Plan`` in order (the requested model, then its fallbacks),
and returns the first result with a ``Routing`` record, or raises the error that ended it::

    for each candidate, while attempts < max_attempts:
        admit      the model's circuit: open -> next candidate (no attempt), unless nothing else
                   is left to route to (panic: call it anyway); half-open -> this request is
                   the probe: one attempt, bounded by the probe timeout
        attempt    in a bulkhead slot (full -> next candidate, no attempt), with the client's own
                   credentials for this provider if it brought some
        decide     on a failure, the step that follows (``decide``, the table below)
        verdict    once per request and model: served, unwell (any attempt failed in a way that
                   ``counts_against_circuit``), or none -> the circuit
    nothing left -> the last error; 503 provider_not_available if no attempt could be made

``decide`` is a pure function of the failure's ``Failure`` (the error classified by ``classify``,
and what the request allows); this table is its specification, and the tests check it row by
row (``-``: any value)::

    partial sent | kind               | byok on | may retry | wait fits | step
    yes          | -                  | -       | -         | -         | fail
    no           | client key refused | yes     | -         | -         | gateway key
    no           | client key refused | no      | -         | -         | refuse client key
    no           | transient          | -       | yes       | yes       | retry
    no           | transient          | -       | yes       | no        | next model
    no           | transient          | -       | no        | -         | next model
    no           | unknown model      | -       | -         | -         | next model
    no           | final              | -       | -         | -         | fail

- partial sent: a partial image already went to the client (never a retry after data);
- client key refused: the client's own credentials were refused (401/403) or rate-limited (429);
- transient: 429, 5xx, connection errors, timeouts with no answer (``is_transient``);
- unknown model: the upstream does not know the model (404): not worth a retry, a fallback may do;
- final: anything else (4xx, refusals, unreadable 200 answers, the gateway's own auth);
- byok on: ``MESH_IMAGES_BYOK_FALLBACK``;
- may retry: a retry is left on this model (``retries_per_model``), an attempt is left in
  the budget, and this is not the probe of a half-open circuit;
- wait fits: the wait (the upstream's ``Retry-After``, else exponential backoff with jitter) is no
  longer than ``retry_after_max`` and ends before the deadline;
- steps: fail (that error, at once), gateway key (the same model at once with the gateway's
  credentials), refuse client key (401/429 ``byok_fallback_disabled``), retry (wait, then the
  same model), next model.

One deadline bounds it all (attempts, waits for a bulkhead slot, backoff sleeps, fallbacks):
past it, 504 ``gateway_timeout``. A 200 whose body cannot be read is not retried: the upstream
has done (and billed) the work. The final error carries the routing record (headers, and
``error.routing`` for stream error events) and names the candidates skipped and why.
Retry decisions come from the error's type and ``provider_code``, never from HTTP details.

The run keeps no traceback: an error it holds (the last one) is detached from its traceback
and context first, because those frames hold the run itself and the failed answer's body (a
cycle only the garbage collector would free).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.bulkhead import Bulkhead
from mesh_images_asgi._core.cancel import CancelScope
from mesh_images_asgi._core.errors import (
    ByokFallbackDisabled,
    ByokRateLimited,
    GatewayError,
    GatewayTimeout,
    ProviderNotAvailable,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from mesh_images_asgi._core.presence import check_client
from mesh_images_asgi._domain.jobs import (
    GenerationJob,
    PartialImage,
    PartialSink,
    Provider,
    ProviderResult,
)
from mesh_images_asgi._observe.outcome import Outcome, current_outcome
from mesh_images_asgi._routing.breaker import BreakerPolicy, Breakers, Permit

__all__ = [
    "Failure",
    "Kind",
    "Plan",
    "RetryPolicy",
    "Routed",
    "Router",
    "Routing",
    "Step",
    "breakers_from_settings",
    "classify",
    "counts_against_circuit",
    "decide",
    "is_transient",
]

logger = logging.getLogger("mesh_images_asgi")

_KEY_REFUSALS = (UpstreamAuthError, UpstreamRateLimited)
_TRANSIENT_CODES = frozenset({"internal_provider_error", "provider_overloaded", "connection_error"})


def is_transient(error: GatewayError) -> bool:
    """Worth another try on the same model: rate limits, 5xx, connection errors, timeouts."""
    if isinstance(error, UpstreamRateLimited | GatewayTimeout):
        return True
    return type(error) is UpstreamError and error.provider_code in _TRANSIENT_CODES


def counts_against_circuit(error: GatewayError) -> bool:
    """A failure that says the upstream is unwell: not the request, not the client's key, and
    not a rate limit (back-pressure: the upstream is answering, and says when to come back)."""
    if isinstance(error, UpstreamRateLimited):
        return False
    return is_transient(error) or (
        type(error) is UpstreamError and error.provider_code == "bad_response"
    )


class Kind(enum.Enum):
    """What a failed attempt says, for ``decide``."""

    CLIENT_KEY_REFUSED = "client key refused"
    TRANSIENT = "transient"
    UNKNOWN_MODEL = "unknown model"
    FINAL = "final"


class Step(enum.Enum):
    """What the router does after a failed attempt."""

    FAIL = "fail"
    GATEWAY_KEY = "gateway key"
    REFUSE_CLIENT_KEY = "refuse client key"
    RETRY = "retry"
    NEXT_MODEL = "next model"


def classify(error: GatewayError, *, client_credentials: bool) -> Kind:
    """The ``Kind`` of a failed attempt (made with the client's own credentials or not)."""
    if client_credentials and isinstance(error, _KEY_REFUSALS):
        return Kind.CLIENT_KEY_REFUSED
    if is_transient(error):
        return Kind.TRANSIENT
    if type(error) is UpstreamError and error.provider_code == "model_not_found":
        return Kind.UNKNOWN_MODEL
    return Kind.FINAL


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt and what the request allows, the inputs of ``decide``."""

    kind: Kind
    partial_sent: bool = False
    byok_fallback: bool = True
    retry_allowed: bool = True
    wait_fits: bool = True


def decide(failure: Failure) -> Step:
    """The step after a failed attempt: the module docstring's decision table."""
    if failure.partial_sent:
        return Step.FAIL
    match failure.kind:
        case Kind.CLIENT_KEY_REFUSED:
            return Step.GATEWAY_KEY if failure.byok_fallback else Step.REFUSE_CLIENT_KEY
        case Kind.TRANSIENT:
            retry = failure.retry_allowed and failure.wait_fits
            return Step.RETRY if retry else Step.NEXT_MODEL
        case Kind.UNKNOWN_MODEL:
            return Step.NEXT_MODEL
    return Step.FAIL


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The knobs of the router (``Settings`` names them ``MESH_IMAGES_...``)."""

    max_attempts: int = 4
    retries_per_model: int = 2
    backoff: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 30.0
    attempt_timeout: float | None = None
    byok_fallback: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            retries_per_model=settings.retries_per_model,
            backoff=settings.retry_backoff,
            backoff_max=settings.retry_backoff_max,
            retry_after_max=settings.retry_after_max,
            attempt_timeout=settings.attempt_timeout,
            byok_fallback=settings.byok_fallback,
        )

    def backoff_delay(self, retry: int, jitter: float) -> float:
        """Delay before retry number ``retry`` (0-based); ``jitter`` in [0, 1) scales x0.5-x1."""
        return min(self.backoff_max, self.backoff * 2.0**retry) * (0.5 + jitter / 2)


def breakers_from_settings(
    settings: Settings, clock: Callable[[], float] = time.monotonic
) -> Breakers:
    """The circuits of every model, with the settings' ``breaker_*`` knobs."""
    policy = BreakerPolicy(
        failure_rate=settings.breaker_failure_rate,
        minimum_calls=settings.breaker_minimum_calls,
        window=settings.breaker_window,
        cooldown=settings.breaker_cooldown,
        probe_timeout=settings.breaker_probe_timeout,
    )
    return Breakers(policy, clock)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to try for one request: the primary job, then its fallbacks, within ``deadline`` s."""

    job: GenerationJob
    deadline: float
    fallbacks: tuple[GenerationJob, ...] = ()
    skipped: tuple[str, ...] = ()
    """Fallbacks that cannot serve the request, with the reason (told if everything fails)."""

    @property
    def jobs(self) -> tuple[GenerationJob, ...]:
        return (self.job, *self.fallbacks)


@dataclass(frozen=True, slots=True)
class Routing:
    """How a request was served: the model, the upstream attempts, whether a fallback did it."""

    model: str
    attempts: int
    fallback: bool
    byok_fallback: bool = False

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-mesh-routing-model", self.model.encode()),
            (b"x-mesh-routing-attempts", str(self.attempts).encode()),
            (b"x-mesh-routing-fallback", b"true" if self.fallback else b"false"),
        ]
        if self.byok_fallback:
            headers.append((b"x-byok-fallback-triggered", b"true"))
        return headers

    def public(self) -> dict[str, Any]:
        """The record in a stream's final chunk or error event."""
        return {
            "model": self.model,
            "attempts": self.attempts,
            "fallback": self.fallback,
            "byok_fallback": self.byok_fallback,
        }


@dataclass(frozen=True, slots=True)
class Routed:
    """A result, the job that produced it (the served model's) and how it was routed."""

    job: GenerationJob
    result: ProviderResult
    routing: Routing


class Router:
    """Runs ``Plan``s over the providers; the breakers and bulkheads are shared by requests."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        policy: RetryPolicy,
        breakers: Breakers,
        bulkheads: Mapping[str, Bulkhead],
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.providers = providers
        self.policy = policy
        self.breakers = breakers
        self.bulkheads = bulkheads
        self.sleep = sleep
        self.jitter = jitter

    async def run(self, plan: Plan, on_partial: PartialSink | None = None) -> Routed:
        """Serve ``plan``; raise the ``GatewayError`` that ended it (with its routing record)."""
        return await _Run(self, plan, on_partial).run()


class _Stop(Exception):
    """Ends the run with ``error`` (raised outside any ``except`` block: no context to keep)."""

    def __init__(self, error: GatewayError) -> None:
        self.error = error


@dataclass(slots=True)  # one per request, alive for all of it: thousands at once on streams
class _Run:
    """The state of one request's routing."""

    router: Router
    plan: Plan
    on_partial: PartialSink | None
    attempts: int = 0
    deadline: float = 0.0
    last: GatewayError | None = None
    """The last failed attempt's error, detached from its traceback and context."""
    last_model: str | None = None
    unwell: bool = False
    """An attempt on the current candidate failed in a way that counts against its circuit."""
    byok_fallback: bool = False
    byok_off: set[str] = field(default_factory=set)
    partial_sent: bool = False
    queued_at: str | None = None
    notes: list[str] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    """Seconds until each unavailable candidate (open circuit, full bulkhead) takes calls."""
    outcome: Outcome = field(default_factory=current_outcome)
    """The request's record: attempts, retries and the result are observed on it."""
    loop: asyncio.AbstractEventLoop = field(init=False)

    async def run(self) -> Routed:
        policy = self.router.policy
        stop: GatewayError | None = None
        with CancelScope(timeout=self.plan.deadline) as scope:
            assert scope.deadline is not None  # the timeout, resolved on entry
            self.loop, self.deadline = scope.loop, scope.deadline
            try:
                for job in self.plan.jobs:
                    if self.attempts >= policy.max_attempts:
                        self.notes.append(f"attempt budget ({policy.max_attempts}) spent")
                        break
                    routed = await self._candidate(job)
                    if routed is not None:
                        return routed
            except _Stop as stopped:
                stop = stopped.error
        if stop is not None:
            raise self._final(stop)
        if scope.cancelled_caught:
            raise self._final(self._deadline_error())
        raise self._final()

    async def _candidate(self, job: GenerationJob) -> Routed | None:
        """Try one model under one permit of its circuit, and give the circuit one verdict."""
        breaker = self.router.breakers[job.entry.id]
        permit = breaker.admit(panic=self._nowhere_else(job))
        if permit is None:
            self.waits.append(breaker.retry_after())
            self.notes.append(f"{job.entry.id}: circuit open")
            return None
        self.unwell = False
        routed: Routed | None = None
        try:
            routed = await self._tries(job, permit)
        finally:
            breaker.record(permit, True if routed is not None else False if self.unwell else None)
        return routed

    def _nowhere_else(self, job: GenerationJob) -> bool:
        """Panic: ``job`` is the last candidate and no other could take a call."""
        return job is self.plan.jobs[-1] and self.attempts == 0

    async def _tries(self, job: GenerationJob, permit: Permit) -> Routed | None:
        """Attempts on one model until it serves, or ``decide`` moves on or stops the run."""
        retries = 0
        while self.attempts < self.router.policy.max_attempts:
            attempt = self._credentialed(job)
            try:
                result = await self._attempt(attempt, probe=permit.probe)
            except ProviderNotAvailable as error:  # the bulkhead refused: no attempt was made
                self._at_capacity(job, error)
                return None
            except GatewayError as error:
                failure, delay = self._failed(job, attempt, error, permit, retries)
            else:
                return Routed(attempt, result, self._routing(job.entry.id))
            step = decide(failure)
            if step is Step.FAIL:
                raise _Stop(self._last())
            if step is Step.REFUSE_CLIENT_KEY:
                raise _Stop(_byok_refused(self._last()))
            if step is Step.NEXT_MODEL:
                if failure.kind is Kind.UNKNOWN_MODEL:
                    self.notes.append(f"{job.entry.id}: {self._last().message}")
                self._log(job, "trying the next model")
                return None
            if step is Step.GATEWAY_KEY:
                self._log(job, "using the gateway's credentials")
                self.byok_off.add(job.entry.provider)
                self.byok_fallback = True
                continue
            assert delay is not None  # decide() retries only when the wait fits
            self._log(job, f"retrying in {delay:.2f} s")
            retries += 1
            self.outcome.retried(job)
            await self.router.sleep(delay)
        return None

    def _failed(
        self,
        job: GenerationJob,
        attempt: GenerationJob,
        error: GatewayError,
        permit: Permit,
        retries: int,
    ) -> tuple[Failure, float | None]:
        """Record a failed attempt (detached from its traceback); describe it for ``decide``,
        with the wait before a retry (None: no retry allowed, or its wait does not fit)."""
        self.last, self.last_model = _detached(error), job.entry.id
        client_credentials = attempt.credentials is not None
        kind = classify(error, client_credentials=client_credentials)
        if counts_against_circuit(error):
            self.unwell = True
        policy = self.router.policy
        retry_allowed = (
            kind is Kind.TRANSIENT
            and not self.partial_sent
            and not permit.probe
            and retries < policy.retries_per_model
            and self.attempts < policy.max_attempts
        )
        delay = self._delay(retries) if retry_allowed else None
        failure = Failure(
            kind=kind,
            partial_sent=self.partial_sent,
            byok_fallback=policy.byok_fallback,
            retry_allowed=retry_allowed,
            wait_fits=delay is not None,
        )
        return failure, delay

    def _last(self) -> GatewayError:
        assert self.last is not None
        return self.last

    def _at_capacity(self, job: GenerationJob, error: ProviderNotAvailable) -> None:
        self.queued_at = None
        self.waits.append(error.retry_after_seconds or 1.0)
        self.notes.append(f"{job.entry.id}: {job.entry.provider} is at capacity")

    async def _attempt(self, job: GenerationJob, *, probe: bool = False) -> ProviderResult:
        """One upstream call, in a bulkhead slot, bounded by the deadline, the attempt timeout
        and, for a half-open circuit's probe, the probe timeout."""
        entry = job.entry
        bulkhead = self.router.bulkheads.get(entry.provider)
        slot: AbstractAsyncContextManager[bool | None] = (
            bulkhead.slot() if bulkhead is not None else nullcontext()
        )
        self.queued_at = entry.provider
        async with slot as waited:
            if waited:  # a client that left while this request queued: no upstream call
                await check_client()
            self.queued_at = None
            self.attempts += 1
            now = self.loop.time()
            probe_timeout = self.router.breakers.policy.probe_timeout if probe else None
            limits = [self.deadline]
            for timeout in (self.router.policy.attempt_timeout, entry.upstream_timeout):
                if timeout is not None:
                    limits.append(now + timeout)
            if probe_timeout is not None:
                limits.append(now + probe_timeout)
            limit = min(limits)
            provider = self.router.providers[entry.provider]
            sink = self._sink if self.on_partial is not None else None
            with self.outcome.attempt(job) as attempt:
                if limit >= self.deadline:  # run()'s scope bounds it: no second scope to hold
                    return attempt.succeeded(await provider.generate(job, sink))
                with CancelScope(limit):
                    return attempt.succeeded(await provider.generate(job, sink))
                raise GatewayTimeout(
                    f"{entry.id} did not answer within {limit - now:.3g} s.",
                    provider_code="provider_timeout",
                )

    async def _sink(self, partial: PartialImage) -> None:
        assert self.on_partial is not None
        self.partial_sent = True
        await self.on_partial(partial)

    def _credentialed(self, job: GenerationJob) -> GenerationJob:
        """``job`` without the client's credentials once they failed for its provider."""
        if job.entry.provider in self.byok_off and job.credentials is not None:
            keys = {k: v for k, v in job.client_credentials.items() if k != job.entry.provider}
            return replace(job, client_credentials=keys)
        return job

    def _delay(self, retries: int) -> float | None:
        """Seconds to wait before retrying after the last error; None when the wait is too long
        or ends past the deadline."""
        policy, error = self.router.policy, self._last()
        if isinstance(error, UpstreamRateLimited) and error.retry_after_seconds is not None:
            delay = error.retry_after_seconds
            if delay > policy.retry_after_max:
                self.notes.append(f"{self.last_model}: asked to wait {delay:g} s")
                return None
        else:
            delay = policy.backoff_delay(retries, self.router.jitter())
        if self.loop.time() + delay >= self.deadline:
            return None
        return delay

    def _routing(self, model: str) -> Routing:
        return Routing(
            model=model,
            attempts=self.attempts,
            fallback=model != self.plan.job.entry.id,
            byok_fallback=self.byok_fallback,
        )

    def _deadline_error(self) -> GatewayError:
        if self.queued_at is not None and self.attempts == 0:
            return ProviderNotAvailable(
                f"{self.queued_at} had no free slot within the {self.plan.deadline:g} s "
                "deadline; retry shortly.",
                retry_after_seconds=1.0,
            )
        return GatewayTimeout(
            f"The upstream did not finish within {self.plan.deadline:g} s.",
            provider_code="provider_timeout",
        )

    def _final(self, error: GatewayError | None = None) -> GatewayError:
        """The error to answer with: ``error``, else the last attempt's, else a 503."""
        notes = [*self.notes, *self.plan.skipped]
        if error is None:
            error = self.last
        if error is None:
            error = ProviderNotAvailable(
                "No provider can take this request now.",
                retry_after_seconds=min(self.waits, default=1.0),
            )
        with contextlib.suppress(TypeError):  # errors can be shared (a failed token refresh)
            error = copy.copy(error)
        if notes:
            error.message = f"{error.message} Routing: {'; '.join(notes)}."
        routing = self._routing(self.last_model or self.plan.job.entry.id)
        error.headers = [*error.headers, *routing.headers()]
        error.routing = routing.public()
        return error

    def _log(self, job: GenerationJob, then: str) -> None:
        error = self._last()
        code = error.code + (f"/{error.provider_code}" if error.provider_code else "")
        logger.info(
            "mesh-images: %s attempt %d failed (%s); %s", job.entry.id, self.attempts, code, then
        )


def _detached(error: GatewayError) -> GatewayError:
    """``error`` without its traceback and context: their frames hold the run that keeps it
    (a cycle), and the failed answer (its body, the parsed copy)."""
    error.__traceback__ = None
    error.__context__ = error.__cause__ = None
    return error


def _byok_refused(error: GatewayError) -> ByokFallbackDisabled:
    kind = ByokRateLimited if isinstance(error, UpstreamRateLimited) else ByokFallbackDisabled
    return kind(
        f"The provider refused the credentials this request brought, and falling back to the "
        f"gateway's is disabled: {error.message}",
        provider_code=error.provider_code,
        provider_error=error.provider_error,
        retry_after_seconds=(error.retry_after_seconds or 1.0) if kind is ByokRateLimited else None,
    )
