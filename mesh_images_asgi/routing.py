"""Routing one generation: retries, fallbacks and BYOK fallback under one deadline.

The router tries the candidates of a ``Plan`` in order (the requested model, then its fallbacks),
and returns the first result with a ``Routing`` record, or raises the error that ended it::

    for each candidate, while attempts < max_attempts:
        circuit open?            -> next candidate (no attempt)
        provider's bulkhead full -> next candidate (no attempt)
        attempt (with the client's own credentials for this provider, if it brought some)
          ok                            -> done
          failed with the client's credentials on auth / rate limit
                                        -> same model with the gateway's credentials at once,
                                           or 401/429 byok_fallback_disabled when that is off
          partial images already sent   -> that error (never a retry once the client saw data)
          transient (429, 5xx, connection error, timeout with no answer)
                                        -> wait (Retry-After, else exponential backoff with
                                           jitter) and retry, ``retries_per_model`` times; then,
                                           or when the wait would pass the deadline or is longer
                                           than ``retry_after_max``, the next candidate
          upstream does not know the model (404)
                                        -> next candidate
          anything else (4xx, refusals, unreadable 200 answers, auth)
                                        -> that error, at once
    nothing left -> the last error; 503 provider_not_available if no attempt could be made

One deadline bounds it all (attempts, waits for a bulkhead slot, backoff sleeps, fallbacks):
past it, 504 ``gateway_timeout``. A 200 whose body cannot be read is not retried: the upstream
has done (and billed) the work. The final error carries the routing record (headers, and
``error.routing`` for stream error events) and names the candidates skipped and why.
Retry decisions come from the error's type and ``provider_code``, never from HTTP details.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from ._cancel import CancelScope
from .breaker import Breakers
from .bulkhead import Bulkhead
from .config import Settings
from .errors import (
    ByokFallbackDisabled,
    ByokRateLimited,
    GatewayError,
    GatewayTimeout,
    ProviderNotAvailable,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from .outcome import Outcome, current_outcome
from .providers.base import GenerationJob, PartialImage, PartialSink, Provider, ProviderResult

__all__ = [
    "Plan",
    "RetryPolicy",
    "Routed",
    "Router",
    "Routing",
    "counts_against_circuit",
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


def counts_against_circuit(error: GatewayError, *, client_credentials: bool) -> bool:
    """A failure that says the upstream is unwell (not the request, not the client's key)."""
    if client_credentials and isinstance(error, UpstreamRateLimited):
        return False
    return is_transient(error) or (
        type(error) is UpstreamError and error.provider_code == "bad_response"
    )


def _moves_on(error: GatewayError) -> bool:
    """Not worth a retry, but another model may do: the upstream does not know this one."""
    return type(error) is UpstreamError and error.provider_code == "model_not_found"


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

    def run(self, plan: Plan, on_partial: PartialSink | None = None) -> Coroutine[Any, Any, Routed]:
        """Serve ``plan``; raise the ``GatewayError`` that ended it (with its routing record).

        The run's own coroutine (no layer of ``await`` around it): call it in the request's task.
        """
        return _Run(self, plan, on_partial).run()


@dataclass(slots=True)  # one per request, alive for all of it: thousands at once on streams
class _Run:
    """The state of one request's routing."""

    router: Router
    plan: Plan
    on_partial: PartialSink | None
    attempts: int = 0
    deadline: float = 0.0
    last: GatewayError | None = None
    last_model: str | None = None
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
        with CancelScope(timeout=self.plan.deadline) as scope:
            assert scope.deadline is not None  # the timeout, resolved on entry
            self.loop, self.deadline = scope.loop, scope.deadline
            for job in self.plan.jobs:
                if self.attempts >= policy.max_attempts:
                    self.notes.append(f"attempt budget ({policy.max_attempts}) spent")
                    break
                routed = await self._candidate(job)
                if routed is not None:
                    return routed
        if scope.cancelled_caught:
            raise self._final(self._deadline_error()) from None
        raise self._final() from None

    async def _candidate(self, job: GenerationJob) -> Routed | None:
        """Try one model; its result, or None to move on to the next candidate."""
        router, policy = self.router, self.router.policy
        breaker = router.breakers[job.entry.id]
        retries = 0
        while self.attempts < policy.max_attempts:
            permit = breaker.admit()
            if permit is None:
                self.waits.append(breaker.retry_after())
                self.notes.append(f"{job.entry.id}: circuit open")
                return None
            attempt = self._credentialed(job)
            client_credentials = attempt.credentials is not None
            try:
                result = await self._attempt(attempt)
            except ProviderNotAvailable as error:  # the bulkhead refused: no attempt was made
                self.queued_at = None
                breaker.record(permit, None)
                self.waits.append(error.retry_after_seconds or 1.0)
                self.notes.append(f"{job.entry.id}: {job.entry.provider} is at capacity")
                return None
            except GatewayError as error:
                unwell = counts_against_circuit(error, client_credentials=client_credentials)
                breaker.record(permit, False if unwell else None)
                self.last, self.last_model = error, job.entry.id
                if self.partial_sent:
                    raise self._final() from None
                if client_credentials and isinstance(error, _KEY_REFUSALS):
                    if not policy.byok_fallback:
                        raise self._final(_byok_refused(error)) from None
                    self._log(job, error, "using the gateway's credentials")
                    self.byok_off.add(job.entry.provider)
                    self.byok_fallback = True
                    continue
                if not is_transient(error):
                    if _moves_on(error):
                        self._log(job, error, "trying the next model")
                        self.notes.append(f"{job.entry.id}: {error.message}")
                        return None
                    raise self._final() from None
                if self.attempts >= policy.max_attempts:
                    return None  # no sleep for a retry that cannot happen
                delay = self._delay(error, retries)
                if retries >= policy.retries_per_model or delay is None:
                    self._log(job, error, "trying the next model")
                    return None
                self._log(job, error, f"retrying in {delay:.2f} s")
                retries += 1
                self.outcome.retried(job)
                await router.sleep(delay)
            except BaseException:
                breaker.record(permit, None)
                raise
            else:
                breaker.record(permit, True)
                return Routed(attempt, result, self._routing(job.entry.id))
        return None

    async def _attempt(self, job: GenerationJob) -> ProviderResult:
        """One upstream call, in a bulkhead slot, bounded by the deadline and attempt timeout."""
        entry = job.entry
        bulkhead = self.router.bulkheads.get(entry.provider)
        slot: AbstractAsyncContextManager[None] = (
            bulkhead.slot() if bulkhead is not None else nullcontext()
        )
        self.queued_at = entry.provider
        async with slot:
            self.queued_at = None
            self.attempts += 1
            now = self.loop.time()
            limits = [self.deadline]
            for timeout in (self.router.policy.attempt_timeout, entry.upstream_timeout):
                if timeout is not None:
                    limits.append(now + timeout)
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

    def _delay(self, error: GatewayError, retries: int) -> float | None:
        """Seconds to wait before retrying; None when the wait is too long or past the deadline."""
        policy = self.router.policy
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

    def _log(self, job: GenerationJob, error: GatewayError, then: str) -> None:
        code = error.code + (f"/{error.provider_code}" if error.provider_code else "")
        logger.info(
            "mesh-images: %s attempt %d failed (%s); %s", job.entry.id, self.attempts, code, then
        )


def _byok_refused(error: GatewayError) -> ByokFallbackDisabled:
    kind = ByokRateLimited if isinstance(error, UpstreamRateLimited) else ByokFallbackDisabled
    return kind(
        f"The provider refused the credentials this request brought, and falling back to the "
        f"gateway's is disabled: {error.message}",
        provider_code=error.provider_code,
        provider_error=error.provider_error,
        retry_after_seconds=(error.retry_after_seconds or 1.0) if kind is ByokRateLimited else None,
    )
