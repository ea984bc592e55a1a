"""Bring your own key, over real HTTP: the client's key first, the gateway's on its auth or rate
limit failure (or 401/429 ``byok_fallback_disabled``), OpenAI and Vertex AI alike. Every key used
here is watched for in every log line of the run (``tests.support.leaks``)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mesh_images_asgi import ImagesApp
from mesh_images_asgi.providers import vertex_auth
from tests.emulators.openai import rate_limited
from tests.faults.conftest import CLIENT_KEY, KEY, Gateway, Upstreams, error_of, sequence
from tests.support.leaks import WATCH
from tests.support.live import serve

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
        {"model": "vertex/gemini-3.1-flash-image"},
        headers={"X-Vertex-Credentials": json.dumps(info)},
    )
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "X-Vertex-Credentials"
    assert upstreams.vertex.requests == []


def _pem(key: Any) -> str:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data.decode()


def oversized_rsa_pem(bits: int = 15_360) -> str:
    """An RSA private key of ``bits`` bits in structure (its factors are not prime: a real one
    takes minutes to generate). What the gateway must read is its size, before loading it."""
    half = bits // 2
    while True:
        p = secrets.randbits(half) | 1 << (half - 1) | 1
        q = secrets.randbits(half) | 1 << (half - 1) | 1
        try:
            iqmp = pow(q, -1, p)
        except ValueError:
            continue
        break
    n = p * q
    d = secrets.randbelow(n - 2) | 1  # below the modulus, as the encoding asks
    public = rsa.RSAPublicNumbers(65537, n)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), iqmp, public)
    return _pem(numbers.private_key(unsafe_skip_rsa_key_validation=True))


def with_private_key(upstreams: Upstreams, pem: str) -> str:
    """The client's service-account key (raw JSON) holding ``pem`` instead of its own key."""
    assert upstreams.client_key_file is not None
    info = json.loads(upstreams.client_key_file.read_text())
    return json.dumps({**info, "private_key": WATCH.secret(pem)})


@pytest.mark.parametrize(
    ("make_pem", "problem"),
    [
        (oversized_rsa_pem, "more than 4096"),
        (lambda: _pem(ec.generate_private_key(ec.SECP256R1())), "not an RSA key"),
    ],
    ids=["rsa-15360", "ec-p256"],
)
def test_a_client_key_that_is_not_a_small_rsa_key_is_the_auth_failure_and_never_loaded(
    make_gateway: MakeGateway,
    upstreams: Upstreams,
    monkeypatch: pytest.MonkeyPatch,
    make_pem: Callable[[], str],
    problem: str,
) -> None:
    loaded: list[object] = []
    load = vertex_auth._client_credentials

    def counted_load(*args: Any) -> Any:
        loaded.append(args)
        return load(*args)

    monkeypatch.setattr(vertex_auth, "_client_credentials", counted_load)
    credentials = with_private_key(upstreams, make_pem())
    calls = upstreams.oauth.calls
    with make_gateway(byok_fallback=False) as gw:
        refused = gw.post(
            {"model": "vertex/gemini-3.1-flash-image"},
            headers={"X-Vertex-Credentials": credentials},
        )
    error = error_of(refused)
    assert refused.status_code == 401, refused.text
    assert (error["code"], error["provider_code"]) == (
        "byok_fallback_disabled",
        "invalid_client_credentials",
    )
    assert problem in error["message"]
    assert loaded == []  # refused before google-auth loads (and checks) it
    assert upstreams.oauth.calls == calls
    assert upstreams.vertex.requests == []


def test_client_keys_load_off_the_event_loop_a_bounded_number_at_once(
    upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    loading: list[int] = []
    load = vertex_auth._client_credentials

    def slow_load(*args: Any) -> Any:  # a key that takes long to load, in a worker thread
        loading.append(threading.get_ident())
        release.wait(30)
        return load(*args)

    monkeypatch.setattr(vertex_auth, "_client_credentials", slow_load)
    # A deadline long enough for the test to look while the keys load (it only catches hangs).
    settings = upstreams.settings(client_key_threads=2, upstream_timeout=30)
    app = ImagesApp(settings, health=True)
    credentials = upstreams.client_service_account()
    with serve(app) as url, ThreadPoolExecutor(3) as pool:
        try:
            posts = [
                pool.submit(
                    httpx.post,
                    url + "/v1/images/generations",
                    json={"prompt": "fox", "model": "vertex/gemini-3.1-flash-image"},
                    headers={"X-Vertex-Credentials": credentials},
                    timeout=30,
                )
                for _ in range(3)
            ]
            limiter = app.service.providers["vertex"].client_keys  # type: ignore[attr-defined]
            deadline = time.monotonic() + 20
            while (len(loading), limiter.statistics().tasks_waiting) != (2, 1):
                assert time.monotonic() < deadline, (loading, limiter.statistics())
                time.sleep(0.01)
            health = httpx.get(url + "/healthz", timeout=10)  # while two keys are loading
            assert len(loading) == 2  # the third waits for a thread
        finally:
            release.set()
        answers = [post.result() for post in posts]
    assert health.status_code == 200
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert len(loading) == 3
