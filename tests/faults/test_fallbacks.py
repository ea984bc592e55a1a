"""Fallbacks over real HTTP: to another provider, past models that cannot serve the request, and
what the client is told when nothing can."""

from __future__ import annotations

from tests.emulators.openai import overloaded
from tests.faults.conftest import Gateway, Upstreams, error_of


def test_a_failing_openai_model_falls_back_to_vertex(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault = overloaded()
    response = gateway.post(
        {"models": ["vertex/gemini-3.1-flash-image"], "response_format": "b64_json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-mesh-routing-model"] == "vertex/gemini-3.1-flash-image"
    assert response.headers["x-mesh-routing-attempts"] == "4"
    assert response.headers["x-mesh-routing-fallback"] == "true"
    assert len(upstreams.openai.requests) == 3
    assert len(upstreams.vertex.requests) == 1
    assert "b64_json" in response.json()["data"][0]


def test_a_fallback_that_cannot_serve_the_request_is_skipped(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault_for = lambda body: (
        overloaded() if body["model"] == "gpt-image-2" else None
    )
    response = gateway.post(
        {"size": "1536x1024", "models": ["vertex/gemini-3.1-flash-image", "openai/gpt-image-1.5"]}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-mesh-routing-model"] == "openai/gpt-image-1.5"
    assert upstreams.vertex.requests == []  # Gemini has no 1536x1024: never asked


def test_when_everything_fails_the_client_is_told_why_each_fallback_was_not_used(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.openai.fault = overloaded()
    response = gateway.post({"size": "1536x1024", "models": ["vertex/gemini-3.1-flash-image"]})
    assert response.status_code == 502
    error = error_of(response)
    assert error["provider_code"] == "provider_overloaded"
    assert "vertex/gemini-3.1-flash-image skipped: size '1536x1024'" in error["message"]
    assert response.headers["x-mesh-routing-attempts"] == "3"
    assert upstreams.vertex.requests == []


def test_an_unknown_fallback_is_404_before_any_upstream_call(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    response = gateway.post({"models": ["openai/no-such-model"]})
    assert response.status_code == 404
    assert error_of(response)["param"] == "models"
    assert upstreams.openai.requests == []
