"""A circuit breaker per model (its provider and upstream model together).

    closed     calls go through; ``threshold`` failures in a row open the circuit
    open       calls are refused for ``cooldown`` seconds (the router tries fallbacks instead)
    half-open  after the cooldown one call, the probe, goes through: success closes the circuit,
               failure opens it for another cooldown; other calls are refused meanwhile

Only failures that say something about the upstream's health count (5xx, timeouts, dropped
connections, unreadable answers, 429s on the gateway's own key); the router decides which. A call
that ends without a verdict (cancelled by a client that left, refused as a bad request) leaves
the state as it was, and frees the probe slot if it held it. The clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Breaker", "Breakers", "Permit"]

State = Literal["closed", "open", "half-open"]


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; ``probe`` when it is the half-open circuit's one trial call."""

    probe: bool


_CALL = Permit(probe=False)
_PROBE = Permit(probe=True)


class Breaker:
    """The circuit of one model."""

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "open" if self._opened_at + self._cooldown > self._clock() else "half-open"

    def retry_after(self) -> float:
        """Seconds until a call may go through again (0 when one may now)."""
        if self._opened_at is None:
            return 0.0
        left = self._opened_at + self._cooldown - self._clock()
        if left > 0:
            return left
        return self._cooldown if self._probing else 0.0

    def admit(self) -> Permit | None:
        """A permit for one call, or None while the circuit refuses calls."""
        if self._opened_at is None:
            return _CALL
        if self.retry_after() > 0:
            return None
        self._probing = True
        return _PROBE

    def record(self, permit: Permit, healthy: bool | None) -> None:
        """The outcome of a permitted call: True success, False failure, None no verdict."""
        if healthy is None:
            if permit.probe:
                self._probing = False
            return
        if healthy:
            self._failures = 0
            self._opened_at = None
            self._probing = False
            return
        self._failures += 1
        if permit.probe or (self._opened_at is None and self._failures >= self._threshold):
            self._opened_at = self._clock()
            self._probing = False


class Breakers:
    """One ``Breaker`` per key (a model id), made on first use."""

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    def __getitem__(self, key: str) -> Breaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = Breaker(self._threshold, self._cooldown, self._clock)
        return breaker

    def items(self) -> list[tuple[str, Breaker]]:
        """The breakers made so far, by key (for metrics)."""
        return list(self._breakers.items())
