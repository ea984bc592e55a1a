"""The router with fake providers: retries, backoff, fallbacks, BYOK, breaker and bulkhead, under
one deadline. Sleeps are recorded, not slept; jitter is fixed; the breakers' clock is injected.
The routing decision is checked row by row against the table in ``routing``'s docstring."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from mesh_images_asgi import Settings
from mesh_images_asgi._asgi import disconnect
from mesh_images_asgi._asgi.disconnect import call_until_disconnect
from mesh_images_asgi._core.errors import (
    ByokFallbackDisabled,
    ByokRateLimited,
    ContentPolicyViolation,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    ProviderNotAvailable,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from mesh_images_asgi._domain.catalog import load_catalog
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialImage,
    PartialSink,
    ProviderResult,
)
from mesh_images_asgi._domain.schemas import parse_request
from mesh_images_asgi._routing import router as routing
from mesh_images_asgi._routing.byok import ClientKeys
from mesh_images_asgi._routing.router import (
    Failure,
    Kind,
    Routed,
    Routing,
    Step,
    breakers_from_settings,
    counts_against_circuit,
    decide,
    is_transient,
)
from mesh_images_asgi._routing.service import ImageService
from tests.support.clock import FakeClock

OK = ProviderResult(images=[GeneratedImage(b64_json="aW1hZ2U=")], created=1)
PRIMARY = "openai/gpt-image-2"
SECOND = "openai/gpt-image-1.5"


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def overloaded() -> UpstreamError:
    return UpstreamError("overloaded", provider_code="provider_overloaded")


Outcome = ProviderResult | Exception | Callable[[GenerationJob, PartialSink | None], Awaitable[Any]]


class Fake:
    """Answers with the scripted outcomes in order, then OK; records every call."""

    def __init__(self, name: str, *outcomes: Outcome) -> None:
        self.name = name
        self.outcomes = list(outcomes)
        self.calls: list[GenerationJob] = []

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        self.calls.append(job)
        outcome = self.outcomes.pop(0) if self.outcomes else OK
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, ProviderResult):
            return outcome
        result: ProviderResult = await outcome(job, on_partial)
        return result

    @property
    def models(self) -> list[str]:
        return [job.entry.id for job in self.calls]

    async def aclose(self) -> None:
        return None


class Harness:
    def __init__(
        self, openai: Fake, vertex: Fake | None = None, catalog: Any = None, **settings: Any
    ) -> None:
        settings.setdefault("retry_backoff", 1.0)
        settings.setdefault("retry_backoff_max", 8.0)
        providers = {"openai": openai, **({"vertex": vertex} if vertex else {})}
        config = Settings(**settings)
        self.service = ImageService(config, load_catalog(catalog), providers)
        self.clock = FakeClock(1000.0)
        self.service.router.breakers = breakers_from_settings(config, self.clock)
        self.sleeps: list[float] = []
        self.service.router.sleep = self._sleep
        self.service.router.jitter = lambda: 0.0  # backoff x0.5

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def run(
        self,
        body: dict[str, Any] | None = None,
        keys: ClientKeys | None = None,
        on_partial: PartialSink | None = None,
    ) -> Routed:
        request = parse_request(_json({"model": PRIMARY, "prompt": "a", **(body or {})}))
        plan = self.service.plan(request, keys=keys)
        return await self.service.generate(plan, on_partial)

    async def fail(self, body: dict[str, Any] | None = None, **kw: Any) -> GatewayError:
        with pytest.raises(GatewayError) as raised:
            await self.run(body, **kw)
        return raised.value


def headers(error: GatewayError) -> dict[bytes, bytes]:
    return dict(error.response_headers())


@pytest.mark.anyio
async def test_success_first_try_is_one_attempt_without_fallback() -> None:
    routed = await Harness(Fake("openai")).run()
    assert routed.routing == Routing(model=PRIMARY, attempts=1, fallback=False)
    assert dict(routed.routing.headers()) == {
        b"x-mesh-routing-model": PRIMARY.encode(),
        b"x-mesh-routing-attempts": b"1",
        b"x-mesh-routing-fallback": b"false",
    }


@pytest.mark.anyio
async def test_transient_failures_are_retried_with_exponential_backoff() -> None:
    openai = Fake("openai", overloaded(), UpstreamError("x", provider_code="connection_error"))
    harness = Harness(openai)
    routed = await harness.run()
    assert routed.routing.attempts == 3
    assert harness.sleeps == [0.5, 1.0]  # 1 s, 2 s, jittered x0.5


@pytest.mark.anyio
async def test_a_rate_limit_waits_the_upstreams_retry_after_or_backs_off_without_one() -> None:
    hinted = Harness(Fake("openai", UpstreamRateLimited("slow down", retry_after_seconds=2.5)))
    assert (await hinted.run()).routing.attempts == 2
    assert hinted.sleeps == [2.5]
    unhinted = Harness(Fake("openai", UpstreamRateLimited("slow down")))
    await unhinted.run()
    assert unhinted.sleeps == [0.5]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (UpstreamRateLimited("r"), True),
        (GatewayTimeout("t", provider_code="provider_timeout"), True),
        (UpstreamError("e", provider_code="internal_provider_error"), True),
        (UpstreamError("e", provider_code="provider_overloaded"), True),
        (UpstreamError("e", provider_code="connection_error"), True),
        (UpstreamError("e", provider_code="bad_response"), False),
        (UpstreamError("e", provider_code="model_not_found"), False),
        (UpstreamAuthError("a"), False),
        (InvalidRequest("i"), False),
        (ContentPolicyViolation("c"), False),
    ],
)
def test_only_rate_limits_5xx_connection_errors_and_timeouts_are_transient(
    error: GatewayError, transient: bool
) -> None:
    assert is_transient(error) is transient


def test_the_circuit_counts_unreadable_answers_but_never_a_rate_limit() -> None:
    assert counts_against_circuit(UpstreamError("e", provider_code="bad_response"))
    assert counts_against_circuit(UpstreamError("e", provider_code="provider_overloaded"))
    assert counts_against_circuit(GatewayTimeout("t", provider_code="provider_timeout"))
    assert not counts_against_circuit(UpstreamRateLimited("r", retry_after_seconds=5))
    assert not counts_against_circuit(InvalidRequest("i"))


def decision_table() -> list[tuple[dict[str, str], str]]:
    """The rows of the decision table in ``routing``'s docstring: conditions, step."""
    assert routing.__doc__ is not None
    lines = [line.strip() for line in routing.__doc__.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("partial sent |"))
    names = [cell.strip() for cell in lines[start].split("|")]
    rows = []
    for line in lines[start + 1 :]:
        if "|" not in line:
            break
        cells = dict(zip(names, (cell.strip() for cell in line.split("|")), strict=True))
        rows.append((cells, cells.pop("step")))
    return rows


def failure(cells: dict[str, str]) -> Failure:
    yes = {"yes": True, "no": False}
    return Failure(
        kind=Kind(cells["kind"]),
        partial_sent=yes[cells["partial sent"]],
        byok_fallback=yes[cells["byok on"]],
        retry_allowed=yes[cells["may retry"]],
        wait_fits=yes[cells["wait fits"]],
    )


def expand(cells: dict[str, str]) -> list[dict[str, str]]:
    """Every combination a row stands for (``-``: any value)."""
    combos: list[dict[str, str]] = [{}]
    for name, value in cells.items():
        values = [value]
        if value == "-":
            values = [kind.value for kind in Kind] if name == "kind" else ["yes", "no"]
        combos = [{**combo, name: v} for combo in combos for v in values]
    return combos


TABLE = decision_table()


@pytest.mark.parametrize(("cells", "step"), TABLE, ids=[" | ".join(c.values()) for c, _ in TABLE])
def test_decide_follows_each_row_of_the_decision_table(cells: dict[str, str], step: str) -> None:
    for combo in expand(cells):
        assert decide(failure(combo)) is Step(step), combo


def test_the_decision_table_covers_every_case_once() -> None:
    seen: list[tuple[str, ...]] = []
    for cells, _ in TABLE:
        seen += [tuple(combo.values()) for combo in expand(cells)]
    assert len(seen) == len(set(seen)) == len(Kind) * 2**4


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("bad size", param="size"),
        ContentPolicyViolation("refused"),
        UpstreamAuthError("bad key"),
        UpstreamError("not JSON", provider_code="bad_response"),
    ],
)
async def test_client_errors_refusals_auth_and_unreadable_answers_are_never_retried(
    error: GatewayError,
) -> None:
    openai = Fake("openai", error)
    harness = Harness(openai)
    raised = await harness.fail({"models": [SECOND]})
    assert type(raised) is type(error)
    assert openai.models == [PRIMARY]
    assert headers(raised)[b"x-mesh-routing-attempts"] == b"1"
    assert harness.sleeps == []


@pytest.mark.anyio
async def test_after_its_retries_the_next_model_serves_and_says_so() -> None:
    openai = Fake("openai", overloaded(), overloaded(), overloaded())
    routed = await Harness(openai).run({"models": [SECOND]})
    assert openai.models == [PRIMARY, PRIMARY, PRIMARY, SECOND]
    assert routed.routing == Routing(model=SECOND, attempts=4, fallback=True)
    assert routed.job.entry.id == SECOND


@pytest.mark.anyio
async def test_configured_fallbacks_are_used_and_a_request_list_replaces_them() -> None:
    catalog = {PRIMARY: {"fallbacks": [SECOND]}}
    configured = Fake("openai", UpstreamError("gone", provider_code="model_not_found"))
    routed = await Harness(configured, catalog=catalog).run()
    assert configured.models == [PRIMARY, SECOND]  # an unknown upstream model moves on at once
    replaced = Fake("openai", UpstreamError("gone", provider_code="model_not_found"))
    await Harness(replaced, catalog=catalog).run({"models": ["openai/gpt-image-1-mini"]})
    assert replaced.models == [PRIMARY, "openai/gpt-image-1-mini"]
    assert routed.routing.fallback


@pytest.mark.anyio
async def test_without_model_the_first_of_models_is_the_primary() -> None:
    openai = Fake("openai", overloaded(), overloaded(), overloaded())
    harness = Harness(openai)
    request = parse_request(_json({"prompt": "a", "models": [SECOND, PRIMARY]}))
    routed = await harness.service.generate(harness.service.plan(request))
    assert openai.models == [SECOND] * 3 + [PRIMARY]
    assert routed.routing.fallback


@pytest.mark.anyio
async def test_fallbacks_that_cannot_serve_the_request_are_skipped_and_named() -> None:
    openai = Fake("openai", overloaded(), overloaded(), overloaded())
    vertex = Fake("vertex")
    harness = Harness(openai, vertex)
    # gemini-3.1-flash-image has no 1536x1024 (its 3:2 is 1264x848).
    error = await harness.fail({"size": "1536x1024", "models": ["vertex/gemini-3.1-flash-image"]})
    assert vertex.calls == []
    assert error.code == "upstream_error"
    assert "vertex/gemini-3.1-flash-image skipped: size '1536x1024'" in error.message
    assert error.routing == {
        "model": PRIMARY,
        "attempts": 3,
        "fallback": False,
        "byok_fallback": False,
    }


@pytest.mark.anyio
async def test_unknown_request_fallbacks_are_404_before_any_attempt() -> None:
    openai = Fake("openai")
    harness = Harness(openai)
    with pytest.raises(ModelNotFound) as raised:
        await harness.run({"models": ["openai/nope"]})
    assert raised.value.param == "models"
    assert openai.calls == []


@pytest.mark.anyio
async def test_a_key_never_falls_back_to_a_model_it_may_not_use() -> None:
    harness = Harness(Fake("openai", overloaded(), overloaded(), overloaded()))
    request = parse_request(_json({"model": PRIMARY, "prompt": "a", "models": [SECOND]}))
    plan = harness.service.plan(request, allow=lambda entry: entry.id == PRIMARY)
    assert plan.fallbacks == ()
    assert plan.skipped == (f"{SECOND} skipped: this API key may not use it",)


@pytest.mark.anyio
async def test_the_attempt_budget_spans_retries_and_fallbacks() -> None:
    openai = Fake("openai", *[overloaded()] * 10)
    harness = Harness(openai, max_attempts=2, retries_per_model=5)
    error = await harness.fail({"models": [SECOND]})
    assert openai.models == [PRIMARY, PRIMARY]
    assert "attempt budget (2) spent" in error.message
    assert headers(error)[b"x-mesh-routing-attempts"] == b"2"


@pytest.mark.anyio
async def test_no_wait_when_the_budget_allows_no_further_attempt() -> None:
    limited = UpstreamRateLimited("later", retry_after_seconds=3.5)
    harness = Harness(Fake("openai", limited), max_attempts=1)
    error = await harness.fail()
    assert harness.sleeps == []
    assert error.status == 429


@pytest.mark.anyio
async def test_a_retry_after_longer_than_the_limit_moves_on_without_waiting() -> None:
    openai = Fake("openai", UpstreamRateLimited("later", retry_after_seconds=60))
    harness = Harness(openai, retry_after_max=30)
    routed = await harness.run({"models": [SECOND]})
    assert harness.sleeps == []
    assert routed.routing.model == SECOND
    only = Harness(Fake("openai", UpstreamRateLimited("later", retry_after_seconds=60)))
    error = await only.fail()
    assert (error.status, headers(error)[b"retry-after"]) == (429, b"60")
    assert "asked to wait 60 s" in error.message


@pytest.mark.anyio
async def test_no_backoff_sleeps_past_the_deadline() -> None:
    harness = Harness(Fake("openai", overloaded(), overloaded()), upstream_timeout=0.3)
    error = await harness.fail()
    assert harness.sleeps == []  # 0.5 s would pass the 0.3 s deadline
    assert error.code == "upstream_error"


@pytest.mark.anyio
async def test_one_deadline_bounds_every_attempt() -> None:
    async def hang(job: GenerationJob, on_partial: PartialSink | None) -> Any:
        await anyio.sleep(10)

    harness = Harness(Fake("openai", hang), upstream_timeout=0.05)
    with anyio.fail_after(2):
        error = await harness.fail({"models": [SECOND]})
    assert isinstance(error, GatewayTimeout)
    assert (error.status, error.provider_code) == (504, "provider_timeout")
    assert headers(error)[b"x-mesh-routing-attempts"] == b"1"


@pytest.mark.anyio
async def test_an_attempt_that_times_out_is_retried_within_the_deadline() -> None:
    async def hang(job: GenerationJob, on_partial: PartialSink | None) -> Any:
        await anyio.sleep(10)

    openai = Fake("openai", hang)
    harness = Harness(openai, attempt_timeout=0.05, upstream_timeout=5)
    with anyio.fail_after(2):
        routed = await harness.run()
    assert routed.routing.attempts == 2


@pytest.mark.anyio
async def test_never_a_retry_once_a_partial_image_was_sent() -> None:
    async def partial_then_fail(job: GenerationJob, on_partial: PartialSink | None) -> Any:
        assert on_partial is not None
        await on_partial(PartialImage(b64_json="cA==", index=0))
        raise overloaded()

    async def sink(partial: PartialImage) -> None:
        return None

    openai = Fake("openai", partial_then_fail)
    harness = Harness(openai)
    body = {"stream": True, "partial_images": 1, "models": [SECOND]}
    with pytest.raises(UpstreamError):
        await harness.run(body, on_partial=sink)
    assert openai.models == [PRIMARY]


@pytest.mark.anyio
async def test_client_key_first_then_the_gateways_on_auth_failure() -> None:
    openai = Fake("openai", UpstreamAuthError("bad client key"))
    routed = await Harness(openai).run(keys=ClientKeys(any_provider="sk-client"))
    assert [job.credentials for job in openai.calls] == ["sk-client", None]
    assert routed.routing == Routing(PRIMARY, attempts=2, fallback=False, byok_fallback=True)
    assert (b"x-byok-fallback-triggered", b"true") in routed.routing.headers()


@pytest.mark.anyio
async def test_client_key_rate_limited_falls_back_without_waiting_or_tripping_the_circuit() -> None:
    openai = Fake("openai", UpstreamRateLimited("yours is slow", retry_after_seconds=9))
    harness = Harness(openai, breaker_minimum_calls=1)
    routed = await harness.run(keys=ClientKeys(by_provider={"openai": "sk-client"}))
    assert harness.sleeps == []
    assert routed.routing.byok_fallback
    assert harness.service.router.breakers[PRIMARY].state == "closed"


@pytest.mark.anyio
async def test_with_byok_fallback_off_the_providers_refusal_is_returned() -> None:
    keys = ClientKeys(any_provider="sk-client")
    auth = await Harness(Fake("openai", UpstreamAuthError("no")), byok_fallback=False).fail(
        keys=keys
    )
    assert isinstance(auth, ByokFallbackDisabled)
    assert (auth.status, auth.code) == (401, "byok_fallback_disabled")
    limited = await Harness(
        Fake("openai", UpstreamRateLimited("slow", retry_after_seconds=4)), byok_fallback=False
    ).fail(keys=keys)
    assert isinstance(limited, ByokRateLimited)
    assert (limited.status, headers(limited)[b"retry-after"]) == (429, b"4")


@pytest.mark.anyio
async def test_byok_credentials_follow_their_provider_only() -> None:
    openai, vertex = Fake("openai", overloaded(), overloaded(), overloaded()), Fake("vertex")
    keys = ClientKeys(any_provider="sk-client")
    await Harness(openai, vertex).run({"models": ["vertex/gemini-3.1-flash-image"]}, keys=keys)
    assert {job.credentials for job in openai.calls} == {"sk-client"}
    assert vertex.calls[0].credentials is None  # X-Provider-Key is the primary's provider's
    assert "sk-client" not in repr(openai.calls[0])


CIRCUIT: dict[str, Any] = {
    "breaker_minimum_calls": 2,
    "breaker_failure_rate": 1.0,
    "breaker_cooldown": 10,
    "retries_per_model": 0,
}


def state(breaker: Any) -> str:
    """The state, read anew (mypy would keep a property narrowed across calls)."""
    return str(breaker.state)


async def hang(job: GenerationJob, on_partial: PartialSink | None) -> Any:
    await anyio.sleep(60)


@pytest.mark.anyio
async def test_a_request_counts_once_against_the_circuit_however_many_attempts_it_made() -> None:
    harness = Harness(Fake("openai", *[overloaded()] * 6), **{**CIRCUIT, "retries_per_model": 2})
    breaker = harness.service.router.breakers[PRIMARY]
    assert (await harness.fail()).routing == {
        "model": PRIMARY,
        "attempts": 3,
        "fallback": False,
        "byok_fallback": False,
    }
    assert state(breaker) == "closed"  # three failed attempts, one failed request
    await harness.fail()
    assert state(breaker) == "open"


@pytest.mark.anyio
async def test_rate_limits_are_back_pressure_and_never_open_the_circuit() -> None:
    limited = [UpstreamRateLimited("slow down", retry_after_seconds=1)] * 8
    harness = Harness(Fake("openai", *limited), **CIRCUIT)
    for _ in range(8):
        await harness.fail()
    assert state(harness.service.router.breakers[PRIMARY]) == "closed"


@pytest.mark.anyio
async def test_an_open_circuit_is_skipped_for_the_fallback_and_a_probe_closes_it() -> None:
    openai = Fake("openai", overloaded(), overloaded())
    harness = Harness(openai, **CIRCUIT)
    breaker = harness.service.router.breakers[PRIMARY]
    await harness.fail()
    await harness.fail()
    assert state(breaker) == "open"
    routed = await harness.run({"models": [SECOND]})
    assert routed.routing == Routing(model=SECOND, attempts=1, fallback=True)
    assert openai.models[2:] == [SECOND]  # the open circuit was not called
    harness.clock.advance(10)
    routed = await harness.run({"models": [SECOND]})  # the probe
    assert routed.routing == Routing(model=PRIMARY, attempts=1, fallback=False)
    assert state(breaker) == "closed"


@pytest.mark.anyio
async def test_a_hanging_probe_fails_after_the_probe_timeout_and_the_fallback_serves() -> None:
    openai = Fake("openai", overloaded(), overloaded(), OK, hang)
    harness = Harness(openai, **CIRCUIT, breaker_probe_timeout=0.05, upstream_timeout=30)
    breaker = harness.service.router.breakers[PRIMARY]
    await harness.fail()
    await harness.fail()
    await harness.run({"models": [SECOND]})
    harness.clock.advance(10)
    with anyio.fail_after(5):  # the deadline is 30 s: only the probe timeout can end it sooner
        routed = await harness.run({"models": [SECOND]})
    assert openai.models[3:] == [PRIMARY, SECOND]
    assert routed.routing == Routing(model=SECOND, attempts=2, fallback=True)
    assert state(breaker) == "open"
    assert breaker.retry_after() == 10


@pytest.mark.anyio
async def test_with_nothing_else_to_route_to_an_open_circuit_is_called_anyway() -> None:
    openai = Fake("openai", overloaded(), overloaded(), overloaded())
    harness = Harness(openai, **CIRCUIT)
    breaker = harness.service.router.breakers[PRIMARY]
    await harness.fail()
    await harness.fail()
    assert state(breaker) == "open"
    panicked = await harness.fail()  # Envoy's panic mode: no 503 while the model is there
    assert panicked.code == "upstream_error"
    assert headers(panicked)[b"x-mesh-routing-attempts"] == b"1"
    assert state(breaker) == "open"
    assert (await harness.run()).routing.attempts == 1
    assert state(breaker) == "closed"  # a success admitted while open closes it


@pytest.mark.anyio
async def test_when_every_candidate_is_open_the_last_one_is_called() -> None:
    openai = Fake("openai", *[overloaded()] * 4)
    harness = Harness(openai, **CIRCUIT)
    for model in (PRIMARY, SECOND):
        for _ in range(2):
            await harness.fail({"model": model})
    routed = await harness.run({"models": [SECOND]})
    assert routed.routing == Routing(model=SECOND, attempts=1, fallback=True)
    assert openai.models[4:] == [SECOND]


@pytest.mark.anyio
async def test_a_full_bulkhead_sends_the_request_elsewhere_or_answers_503() -> None:
    release = anyio.Event()

    started = anyio.Event()

    async def slow(job: GenerationJob, on_partial: PartialSink | None) -> ProviderResult:
        started.set()
        await release.wait()
        return OK

    openai, vertex = Fake("openai", slow, slow), Fake("vertex")
    harness = Harness(openai, vertex, bulkhead_limit=1, bulkhead_queue=0)
    results: list[Routed | GatewayError] = []

    async def one(body: dict[str, Any]) -> None:
        try:
            results.append(await harness.run(body))
        except GatewayError as error:
            results.append(error)

    async with anyio.create_task_group() as group:
        group.start_soon(one, {})
        await started.wait()  # the first holds the only slot
        await one({"models": ["vertex/gemini-3.1-flash-image"]})
        await one({})
        release.set()
    served, rerouted, refused = results[2], results[0], results[1]
    assert isinstance(rerouted, Routed)
    assert rerouted.routing.model.startswith("vertex/")
    assert isinstance(refused, ProviderNotAvailable)
    assert headers(refused)[b"x-mesh-routing-attempts"] == b"0"
    assert isinstance(served, Routed)


@pytest.mark.anyio
async def test_a_client_gone_during_backoff_stops_the_retries() -> None:
    openai = Fake("openai", overloaded(), overloaded())
    harness = Harness(openai)
    sleeping = anyio.Event()

    async def backoff(seconds: float) -> None:
        sleeping.set()
        await anyio.Event().wait()  # a backoff that only a cancellation ends

    harness.service.router.sleep = backoff
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(harness.run)
            await sleeping.wait()
            group.cancel_scope.cancel()  # the client leaves
    assert len(openai.calls) == 1  # the run is over: no attempt can follow


@pytest.mark.anyio
async def test_a_shared_error_is_not_changed_by_routing() -> None:
    shared = UpstreamAuthError("token refresh failed")
    harness = Harness(Fake("openai", shared, shared))
    first, second = await harness.fail(), await harness.fail()
    assert shared.headers == []
    assert shared.routing is None
    assert headers(first) == headers(second)


class Body:
    """A failed answer's body (weakly referenceable, unlike ``bytes``)."""


def unreadable(refs: list[weakref.ref[Body]], error: GatewayError) -> Outcome:
    """A provider call that read a body, failed to parse it and raised ``error`` from there:
    the parse error holds the body (as orjson's holds its document), the frame holds it too."""

    async def call(job: GenerationJob, on_partial: PartialSink | None) -> Any:
        body = Body()
        refs.append(weakref.ref(body))
        try:
            raise ValueError(body)
        except ValueError:
            raise error from None

    return call


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "fails"),
    [(UpstreamError("not JSON", provider_code="bad_response"), True), (overloaded(), False)],
    ids=["answered with that error", "retried and served"],
)
async def test_a_failed_answer_is_freed_without_a_gc_pass(error: GatewayError, fails: bool) -> None:
    refs: list[weakref.ref[Body]] = []
    harness = Harness(Fake("openai", unreadable(refs, error)))
    gc.collect()
    gc.disable()  # only reference counting: a cycle through the run would keep the body
    try:
        if fails:
            raised = await harness.fail()
            assert raised.code == "upstream_error"
        else:
            assert (await harness.run()).routing.attempts == 2
        assert len(refs) == 1
        assert refs[0]() is None
    finally:
        gc.enable()


class Leaving:
    """A client's ``receive`` once the body is read: ``http.disconnect`` once it has ``left()``
    (as a server's, at once when the disconnect is already known)."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()
        self.listened = False

    def left(self) -> None:
        self._gone.set()

    async def __call__(self) -> dict[str, Any]:
        self.listened = True
        await self._gone.wait()
        return {"type": "http.disconnect"}


async def turns_until(condition: Callable[[], bool]) -> None:
    """Let the loop turn until ``condition()`` (the bound only catches a hang)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


@pytest.mark.anyio
@pytest.mark.parametrize("listening", [False, True], ids=["listener not started", "listening"])
async def test_a_queued_request_whose_client_left_never_reaches_the_upstream(
    listening: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot and the disconnect in the same turn of the loop, the slot first: the worst order
    (the listener starts LISTEN_AFTER into the work, or is already waiting in ``receive``)."""
    monkeypatch.setattr(disconnect, "LISTEN_AFTER", 0 if listening else 3600)
    openai = Fake("openai")
    harness = Harness(openai, bulkhead_limit=1, bulkhead_queue=1)
    bulkhead = harness.service.router.bulkheads["openai"]
    client = Leaving()
    request = parse_request(_json({"model": PRIMARY, "prompt": "a"}))
    results: list[Routed | None] = []

    async def queued() -> None:
        plan = harness.service.plan(request)
        results.append(await call_until_disconnect(client, lambda: harness.service.generate(plan)))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            async with bulkhead.slot():
                group.start_soon(queued)
                await turns_until(lambda: bulkhead.waiting == 1 and client.listened == listening)
            client.left()  # in the same turn as the slot's hand-over, after it
    assert results == [None]
    assert openai.calls == []
