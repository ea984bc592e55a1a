"""Bring your own key, over real HTTP: the client's key first, the gateway's on its auth or rate
limit failure (or 401/429 ``byok_fallback_disabled``), OpenAI and Vertex AI alike. Every key used
here is watched for in every log line of the run (``tests.support.leaks``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from tests.emulators.openai import rate_limited
from tests.faults.conftest import CLIENT_KEY, KEY, Gateway, Upstreams, error_of, sequence
from tests.support.leaks import WATCH

MakeGateway = Callable[..., AbstractContextManager[Gateway]]
WATCH.secret(CLIENT_KEY)
WATCH.secret(KEY)


def authorizations(upstreams: Upstreams) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in upstreams.openai.requests]


def test_the_clients_key_is_used_first(gateway: Gateway, upstreams: Upstreams) -> None:
    upstreams.openai.api_key = CLIENT_KEY  # only the client's key works upstream
    response = gateway.post({}, headers={"X-OpenAI-Key": CLIENT_KEY})
    assert response.status_code == 200, response.text
    assert response.headers["x-mesh-routing-attempts"] == "1"
    assert "x-byok-fallback-triggered" not in response.headers
    assert authorizations(upstreams) == [CLIENT_KEY]


def test_a_refused_client_key_falls_back_to_the_gateways(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    response = gateway.post({}, headers={"X-Provider-Key": CLIENT_KEY})
    assert response.status_code == 200, response.text
    assert response.headers["x-byok-fallback-triggered"] == "true"
    assert response.headers["x-mesh-routing-attempts"] == "2"
    assert authorizations(upstreams) == [CLIENT_KEY, KEY]
    assert CLIENT_KEY not in response.text


def test_a_rate_limited_client_key_falls_back_at_once(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault_for = sequence(rate_limited(retry_after="30"))
    started = time.monotonic()
    response = gateway.post({}, headers={"X-OpenAI-Key": CLIENT_KEY})
    assert response.status_code == 200
    assert time.monotonic() - started < 2  # the client's limit is not the gateway's
    assert response.headers["x-byok-fallback-triggered"] == "true"
    assert authorizations(upstreams) == [CLIENT_KEY, KEY]


def test_with_fallback_disabled_the_refusal_is_the_answer(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    with make_gateway(byok_fallback=False) as gw:
        refused = gw.post({}, headers={"X-OpenAI-Key": CLIENT_KEY})
        upstreams.openai.fault_for = sequence(rate_limited(retry_after="7"))
        limited = gw.post({}, headers={"X-OpenAI-Key": CLIENT_KEY})
    assert refused.status_code == 401
    error = error_of(refused)
    assert (error["code"], error["provider_code"]) == ("byok_fallback_disabled", "invalid_api_key")
    assert CLIENT_KEY not in refused.text
    assert refused.headers["x-mesh-routing-attempts"] == "1"
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "7")
    assert error_of(limited)["code"] == "byok_fallback_disabled"
    assert authorizations(upstreams) == [CLIENT_KEY, CLIENT_KEY]  # never the gateway's key


def test_a_clients_service_account_mints_its_own_token_at_the_gateways_token_uri(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    gateway.post(
        {"model": "vertex/gemini-3.1-flash-image"}
    )  # the gateway's own token, for comparison
    calls = upstreams.oauth.calls
    credentials = WATCH.secret(upstreams.client_service_account())
    response = gateway.post(
        {"model": "vertex/gemini-3.1-flash-image"}, headers={"X-Vertex-Credentials": credentials}
    )
    assert response.status_code == 200, response.text
    assert "x-byok-fallback-triggered" not in response.headers
    assert upstreams.oauth.calls == calls + 1  # minted for this request (the key's token_uri
    # points elsewhere: it was ignored, or the call would have failed)
    own, client = (r.headers["authorization"] for r in upstreams.vertex.requests)
    assert own != client
    assert client.startswith("Bearer ya29.")
    WATCH.secret(client.removeprefix("Bearer "))


def test_a_refused_vertex_api_key_falls_back_to_the_gateways_credentials(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    key = WATCH.secret("AQ.client-express-key-0123")
    response = gateway.post(
        {"model": "vertex/gemini-3.1-flash-image"}, headers={"X-Vertex-Credentials": key}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-byok-fallback-triggered"] == "true"
    first, second = upstreams.vertex.requests
    assert first.headers["x-goog-api-key"] == key
    assert first.path.startswith("/v1/publishers/")
    assert second.path.startswith("/v1/projects/")


def test_a_malformed_service_account_is_400_before_any_upstream_call(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    response = gateway.post(
        {"model": "vertex/gemini-3.1-flash-image"},
        headers={"X-Vertex-Credentials": '{"type": "user"}'},
    )
    assert response.status_code == 400
    assert error_of(response)["param"] == "X-Vertex-Credentials"
    assert upstreams.vertex.requests == []


def test_a_service_account_whose_project_ends_in_a_newline_is_400_not_a_500(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    info = {**json.loads(upstreams.client_key_file.read_text()), "project_id": "proj\n"}  # type: ignore[union-attr]
    response = gateway.post(
        {"model": "vertex/imagen-3"}, headers={"X-Vertex-Credentials": json.dumps(info)}
    )
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "X-Vertex-Credentials"
    assert upstreams.vertex.requests == []
