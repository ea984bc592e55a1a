"""A circuit breaker per model (its provider and upstream model together).

    closed     calls go through; each *request's* verdict on the model goes into a sliding window
               of ``window`` seconds (one bucket per second, as resilience4j's time-based
               window); once the window holds ``minimum_calls`` verdicts and at least
               ``failure_rate`` of them are failures, the circuit opens
    open       for ``cooldown`` seconds calls are refused (the router tries the fallbacks), except
               panic calls: a request with nothing else to route to calls anyway (Envoy's panic
               threshold: refusing everything helps no one)
    half-open  after the cooldown one call, the probe, goes through (one attempt, with the
               router's short ``probe_timeout``): success closes the circuit, failure opens it
               for another cooldown; other calls are refused meanwhile (panic calls still go
               through, and are never the probe: they keep their retries)

Verdicts (the router decides them, once per request and model, not per attempt): True the model
served, False it failed in a way that says it is unwell (5xx, timeouts, dropped connections,
unreadable answers), None no verdict: a 429 (back-pressure, not ill health), a bad request, a
client that left. A call with no verdict leaves the state as it was, and frees the probe slot
if it held it.

Only calls admitted after the circuit opened can close it: each permit carries the circuit's
epoch, bumped on every opening and closing, and the verdict of another epoch's call is ignored
(a slow success admitted before the opening does not close it, a late failure does not extend
it). A panic call's success closes the circuit too: it was admitted while open. The clock is
injectable for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Breaker", "BreakerPolicy", "Breakers", "Permit"]

State = Literal["closed", "open", "half-open"]
Kind = Literal["call", "probe", "panic"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The knobs of every circuit (``Settings`` names them ``MESH_IMAGES_BREAKER_...``; the
    defaults are reasoned in ``docs/resilience.md``)."""

    failure_rate: float = 0.5
    minimum_calls: int = 20
    window: float = 60.0
    cooldown: float = 30.0
    probe_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make calls for one request: a ``call`` (closed), the ``probe`` (half-open), or a
    ``panic`` call (open, nothing else to route to); ``epoch`` is the circuit's when admitted."""

    kind: Kind
    epoch: int

    @property
    def probe(self) -> bool:
        return self.kind == "probe"


class _Window:
    """Verdicts of the last ``span`` seconds, in one-second buckets, with running totals."""

    def __init__(self, span: float) -> None:
        self._span = span
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures]
        self.calls = 0
        self.failures = 0

    def add(self, now: float, failed: bool) -> None:
        second = int(now)
        self._expire(second)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        self.calls += 1
        self.failures += failed

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = self.failures = 0

    def _expire(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._span:
            _, calls, failures = self._buckets.popleft()
            self.calls -= calls
            self.failures -= failures


class Breaker:
    """The circuit of one model."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._window = _Window(policy.window)
        self._opened_at: float | None = None
        self._probing = False
        self._epoch = 0

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "open" if self._opened_at + self._policy.cooldown > self._clock() else "half-open"

    def retry_after(self) -> float:
        """Seconds until a call may go through again (0 when one may now)."""
        if self._opened_at is None:
            return 0.0
        left = self._opened_at + self._policy.cooldown - self._clock()
        if left > 0:
            return left
        return self._policy.cooldown if self._probing else 0.0

    def admit(self, *, panic: bool = False) -> Permit | None:
        """A permit for one request's calls, or None while the circuit refuses them.

        ``panic``: the request has nothing else to route to, so it calls even an open circuit.
        """
        if self._opened_at is None:
            return Permit("call", self._epoch)
        if panic:
            return Permit("panic", self._epoch)
        if self.retry_after() == 0:
            self._probing = True
            return Permit("probe", self._epoch)
        return None

    def record(self, permit: Permit, healthy: bool | None) -> None:
        """The verdict of a permitted request: True served, False unwell, None no verdict."""
        if permit.epoch != self._epoch:
            return  # admitted before the last opening or closing: says nothing about now
        if permit.kind == "probe":
            self._probing = False
            if healthy is not None:
                self._close() if healthy else self._open()
        elif permit.kind == "panic":
            if healthy:
                self._close()
        elif healthy is not None:
            self._window.add(self._clock(), failed=not healthy)
            window, policy = self._window, self._policy
            if (
                window.calls >= policy.minimum_calls
                and window.failures >= policy.failure_rate * window.calls
            ):
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._epoch += 1
        self._window.clear()

    def _close(self) -> None:
        self._opened_at = None
        self._probing = False
        self._epoch += 1
        self._window.clear()


class Breakers:
    """One ``Breaker`` per key (a model id), made on first use."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    def __getitem__(self, key: str) -> Breaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = Breaker(self.policy, self._clock)
        return breaker

    def items(self) -> list[tuple[str, Breaker]]:
        """The breakers made so far, by key (for metrics)."""
        return list(self._breakers.items())
