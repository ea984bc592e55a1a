"""The circuit breaker's states, on an injected clock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mesh_images_asgi._routing.breaker import Breaker, BreakerPolicy, Breakers, Permit
from tests.support.clock import FakeClock

POLICY = BreakerPolicy(failure_rate=0.5, minimum_calls=4, window=10, cooldown=10)


def make(clock: FakeClock | None = None, **policy: Any) -> Breaker:
    return Breaker(replace(POLICY, **policy), clock or FakeClock(100.0))


def state(breaker: Breaker) -> str:
    """The state, read anew (mypy would keep a property narrowed across calls)."""
    return breaker.state


def call(breaker: Breaker, healthy: bool | None, times: int = 1) -> None:
    for _ in range(times):
        permit = breaker.admit()
        assert permit is not None
        breaker.record(permit, healthy)


def opened(clock: FakeClock) -> Breaker:
    breaker = make(clock, minimum_calls=1, failure_rate=1.0)
    call(breaker, False)
    assert state(breaker) == "open"
    return breaker


def test_a_few_failures_under_the_minimum_volume_never_open_it() -> None:
    breaker = make()
    call(breaker, False, 3)  # two failed client requests used to open it (one per attempt)
    assert state(breaker) == "closed"
    call(breaker, False)
    assert state(breaker) == "open"


def test_the_failure_rate_over_the_window_opens_it_not_a_run_of_failures() -> None:
    breaker = make(minimum_calls=10)
    for _ in range(5):
        call(breaker, True)
        call(breaker, False)
    assert state(breaker) == "open"  # 5 of 10 failed: 50 %
    mostly_fine = make(minimum_calls=10)
    call(mostly_fine, False, 4)
    call(mostly_fine, True, 6)
    assert state(mostly_fine) == "closed"  # 40 %


def test_verdicts_older_than_the_window_are_forgotten() -> None:
    clock = FakeClock(100.0)
    breaker = make(clock)
    call(breaker, False, 3)
    clock.advance(10)
    call(breaker, False)  # the three earlier ones left the window: one call is under the volume
    assert state(breaker) == "closed"
    call(breaker, False, 3)
    assert state(breaker) == "open"


def test_requests_without_a_verdict_are_not_counted() -> None:
    breaker = make()
    call(breaker, None, 10)  # 429s, bad requests, clients that left
    call(breaker, False, 3)
    assert state(breaker) == "closed"


def test_while_open_calls_are_refused_and_after_the_cooldown_one_probe_goes_through() -> None:
    clock = FakeClock(100.0)
    breaker = opened(clock)
    assert breaker.admit() is None
    assert breaker.retry_after() == 10
    clock.advance(10)
    assert state(breaker) == "half-open"
    probe = breaker.admit()
    assert probe is not None
    assert probe.probe
    assert breaker.admit() is None  # one probe at a time
    breaker.record(probe, True)
    assert state(breaker) == "closed"
    assert breaker.admit() == Permit("call", probe.epoch + 1)


def test_a_failed_probe_opens_the_circuit_for_another_cooldown() -> None:
    clock = FakeClock(100.0)
    breaker = opened(clock)
    clock.advance(10)
    call(breaker, False)
    assert state(breaker) == "open"
    assert breaker.retry_after() == 10


def test_a_probe_without_verdict_frees_the_slot_for_another() -> None:
    clock = FakeClock(100.0)
    breaker = opened(clock)
    clock.advance(10)
    probe = breaker.admit()
    assert probe is not None
    breaker.record(probe, None)  # its client went away, or it was a 429
    second = breaker.admit()
    assert second is not None
    assert second.probe


def test_a_success_admitted_before_opening_does_not_close_it() -> None:
    clock = FakeClock(100.0)
    breaker = make(clock, minimum_calls=1, failure_rate=1.0)
    early = breaker.admit()
    assert early is not None
    call(breaker, False)
    assert state(breaker) == "open"
    breaker.record(early, True)  # a slow success that started while it was healthy
    assert state(breaker) == "open"
    clock.advance(10)
    probe = breaker.admit()
    assert probe is not None
    breaker.record(early, True)
    assert breaker.admit() is None  # still half-open, the probe running


def test_late_failures_of_calls_admitted_before_opening_do_not_extend_it() -> None:
    clock = FakeClock(100.0)
    breaker = make(clock, minimum_calls=1, failure_rate=1.0)
    early = breaker.admit()
    assert early is not None
    call(breaker, False)
    clock.advance(5)
    breaker.record(early, False)
    assert breaker.retry_after() == 5


def test_panic_calls_go_through_an_open_circuit_and_their_success_closes_it() -> None:
    clock = FakeClock(100.0)
    breaker = opened(clock)
    panic = breaker.admit(panic=True)
    assert panic is not None
    assert panic.kind == "panic"
    breaker.record(panic, False)
    assert breaker.retry_after() == 10  # a failed panic call changes nothing
    clock.advance(10)
    panic = breaker.admit(panic=True)
    assert panic is not None
    assert not panic.probe  # never the probe: it keeps its retries
    breaker.record(panic, True)
    assert state(breaker) == "closed"


def test_breakers_are_per_key_and_share_the_policy() -> None:
    breakers = Breakers(BreakerPolicy(minimum_calls=1, failure_rate=1.0), FakeClock(0.0))
    call(breakers["openai/a"], False)
    assert state(breakers["openai/a"]) == "open"
    assert state(breakers["openai/b"]) == "closed"
    assert [key for key, _ in breakers.items()] == ["openai/a", "openai/b"]
