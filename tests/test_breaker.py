"""The circuit breaker's states, on an injected clock."""

from __future__ import annotations

from mesh_images_asgi.breaker import Breaker, Breakers, Permit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(breaker: Breaker) -> str:
    """The state, read anew (mypy would keep a property narrowed across calls)."""
    return breaker.state


def fail(breaker: Breaker, times: int = 1) -> None:
    for _ in range(times):
        permit = breaker.admit()
        assert permit is not None
        breaker.record(permit, False)


def test_consecutive_failures_open_the_circuit_and_a_success_resets_the_count() -> None:
    breaker = Breaker(threshold=3, cooldown=10, clock=Clock())
    fail(breaker, 2)
    permit = breaker.admit()
    assert permit == Permit(probe=False)
    breaker.record(permit, True)
    fail(breaker, 2)
    assert state(breaker) == "closed"
    fail(breaker)
    assert state(breaker) == "open"
    assert breaker.admit() is None
    assert breaker.retry_after() == 10


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=10, clock=clock)
    fail(breaker)
    clock.now += 10
    assert state(breaker) == "half-open"
    probe = breaker.admit()
    assert probe == Permit(probe=True)
    assert breaker.admit() is None  # one probe at a time
    breaker.record(probe, True)
    assert state(breaker) == "closed"
    assert breaker.admit() == Permit(probe=False)


def test_a_failed_probe_opens_the_circuit_for_another_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(threshold=2, cooldown=10, clock=clock)
    fail(breaker, 2)
    clock.now += 10
    fail(breaker)
    assert state(breaker) == "open"
    assert breaker.retry_after() == 10


def test_a_probe_without_verdict_frees_the_slot_for_another() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=10, clock=clock)
    fail(breaker)
    clock.now += 10
    probe = breaker.admit()
    assert probe is not None
    breaker.record(probe, None)  # its client went away
    assert breaker.admit() == Permit(probe=True)


def test_late_failures_of_calls_admitted_before_opening_do_not_extend_it() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=10, clock=clock)
    early = breaker.admit()
    assert early is not None
    fail(breaker)
    clock.now += 5
    breaker.record(early, False)
    assert breaker.retry_after() == 5


def test_breakers_are_per_key() -> None:
    breakers = Breakers(threshold=1, cooldown=10, clock=Clock())
    fail(breakers["openai/a"])
    assert state(breakers["openai/a"]) == "open"
    assert state(breakers["openai/b"]) == "closed"
