"""Clocks for tests: a fake monotonic clock to inject, and keeping a test that counts requests
per minute inside one UTC minute window."""

from __future__ import annotations

import time

__all__ = ["FakeClock", "seconds_left_in_minute", "wait_for_a_fresh_minute"]


def seconds_left_in_minute() -> float:
    return 60 - time.time() % 60


def wait_for_a_fresh_minute(needed: float) -> None:
    """Sleep into the next minute window unless ``needed`` seconds are left in this one."""
    left = seconds_left_in_minute()
    if left < needed:
        time.sleep(left + 0.05)


class FakeClock:
    """A monotonic clock that moves only when told (inject it where the code takes a clock)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
