"""Nothing accumulates: after rounds of mixed faults the gateway's RSS is flat, its loop holds no
task beyond its idle ones and its connections to the emulators stay within its pool."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx

from tests.emulators.openai import Fault, overloaded, rate_limited, server_error
from tests.faults.conftest import POOL, Answer, Gateway, Upstreams
from tests.support.procfs import connections_to, live_rss_bytes

MIX: list[Answer] = [
    None,
    overloaded(),
    rate_limited(retry_after_ms="10"),
    server_error(),
    Fault.DROP,
    Fault.TRUNCATED,
    Fault.MALFORMED,
    Fault.BAD_BASE64,
    None,
]


def one_round(gateway: Gateway, upstreams: Upstreams, requests: int = 90) -> None:
    answers = itertools.cycle(MIX)
    upstreams.openai.fault_for = lambda body: next(answers)
    bodies = [{"stream": index % 3 == 0} for index in range(requests)]
    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda body: gateway.post(body, client).status_code, bodies))
    assert set(statuses) <= {200, 429, 502}
    upstreams.openai.requests.clear()


@contextmanager
def silenced_logs() -> Iterator[None]:
    """The test run keeps every log record (pytest's capture, the secret watch): ~7 KB per request
    here. Silenced, so that RSS measures the gateway. These rounds carry no secret."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def test_rss_tasks_and_sockets_are_flat_over_rounds_of_faults(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    idle = gateway.tasks()
    with silenced_logs():
        one_round(gateway, upstreams)  # warm-up: pools, caches, allocator arenas
        before = live_rss_bytes()
        for _ in range(4):
            one_round(gateway, upstreams)
        growth = live_rss_bytes() - before
    assert growth < 4 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 360 requests"
    assert gateway.tasks() <= idle
    assert sum(connections_to(upstreams.ports).values()) <= POOL + 1  # + the token refresher's
