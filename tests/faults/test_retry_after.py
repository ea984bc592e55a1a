"""Odd ``Retry-After`` values from the upstream, over real HTTP, for JSON and for streams.

Before the fix, ``inf``/``1e400`` on a 429 were a bare 500 (OverflowError) for JSON and a stream
that pinged forever, and ``soon-ish`` on a 503 was a 500 ``internal_error``, not retried. Each is
now a hint ignored: the attempt is retried after the usual backoff.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.emulators.openai import ErrorReply, overloaded, rate_limited
from tests.faults.conftest import Gateway, Upstreams, error_of, sequence, sse_events


def odd_503(value: str) -> ErrorReply:
    reply = overloaded()
    return ErrorReply(reply.status, reply.error, {"retry-after": value})


CASES = [
    pytest.param(rate_limited(retry_after="inf"), 429, id="429 inf"),
    pytest.param(rate_limited(retry_after="1e400"), 429, id="429 1e400"),
    pytest.param(rate_limited(retry_after_ms="1e400"), 429, id="429 ms 1e400"),
    pytest.param(odd_503("soon-ish"), 502, id="503 soon-ish"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("reply", "status"), CASES)
def test_a_garbage_retry_after_is_ignored_and_the_attempt_retried(
    reply: ErrorReply, status: int, stream: bool, gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault_for = sequence(reply)
    response = gateway.post({"stream": stream}, timeout=5)
    assert response.status_code == 200, response.text
    assert len(upstreams.openai.requests) == 2
    if stream:
        events = sse_events(response.text)
        assert events[-1]["status"] == "completed"
        assert events[-1]["routing"]["attempts"] == 2
        assert response.text.endswith("data: [DONE]\n\n")
    else:
        assert response.headers["x-mesh-routing-attempts"] == "2"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("reply", "status"), CASES)
def test_when_retries_are_spent_the_client_gets_the_error_with_a_sane_retry_after(
    reply: ErrorReply, status: int, stream: bool, gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault = reply
    response = gateway.post({"stream": stream}, timeout=5)
    assert len(upstreams.openai.requests) == 3  # the first try and two retries
    error: dict[str, Any]
    if stream:
        assert response.status_code == 200
        assert response.text.endswith("data: [DONE]\n\n")
        error = sse_events(response.text)[-1]["error"]
    else:
        assert response.status_code == status, response.text
        error = error_of(response)
        if status == 429:
            assert response.headers["retry-after"] == "1"  # no usable hint: 1 s
    assert error["code"] == ("upstream_rate_limit_error" if status == 429 else "upstream_error")
