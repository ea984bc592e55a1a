"""Credentials a client brings: the headers, and how Vertex reads its key."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from mesh_images_asgi._core.errors import InvalidRequest
from mesh_images_asgi._routing.byok import MAX_CHARS, ClientKeys, read_client_keys
from mesh_images_asgi.providers.vertex import client_credentials


def scope(*headers: tuple[str, str]) -> dict[str, Any]:
    return {"type": "http", "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}


def test_no_headers_no_credentials() -> None:
    keys = read_client_keys(scope(("Authorization", "Bearer rsk_x")))
    assert not keys
    assert keys.resolve("openai") == {}


def test_provider_key_goes_to_the_primary_and_a_providers_own_header_wins() -> None:
    keys = read_client_keys(
        scope(("X-Provider-Key", " sk-any "), ("X-Vertex-Credentials", "AQ.vertex-key"))
    )
    assert keys.resolve("openai") == {"openai": "sk-any", "vertex": "AQ.vertex-key"}
    assert keys.resolve("vertex") == {"vertex": "AQ.vertex-key"}
    both = read_client_keys(scope(("X-Provider-Key", "sk-any"), ("X-OpenAI-Key", "sk-own")))
    assert both.resolve("openai") == {"openai": "sk-own"}


def test_credentials_never_show_in_a_repr() -> None:
    keys = ClientKeys(any_provider="sk-secret", by_provider={"vertex": "secret-json"})
    assert "secret" not in repr(keys)


@pytest.mark.parametrize("value", ["   ", "x" * (MAX_CHARS + 1)])
def test_an_empty_or_oversized_header_is_400_naming_it(value: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        read_client_keys(scope(("X-OpenAI-Key", value)))
    assert raised.value.param == "X-OpenAI-Key"


SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "byok-project",
    "private_key": "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n",
    "client_email": "someone@byok-project.iam.gserviceaccount.com",
}


def test_vertex_credentials_are_a_service_account_raw_or_base64_or_else_an_api_key() -> None:
    raw = json.dumps(SERVICE_ACCOUNT)
    assert client_credentials(raw) == SERVICE_ACCOUNT
    assert client_credentials(base64.b64encode(raw.encode()).decode()) == SERVICE_ACCOUNT
    assert client_credentials("AQ.Ab8RN6-api-key") == "AQ.Ab8RN6-api-key"
    assert client_credentials("QUl6YVN5") == "QUl6YVN5"  # base64 of no JSON: a key


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"type": "authorized_user"}, "service_account"),
        ({"private_key": None}, "lacks"),
        ({"project_id": "evil.example/x?"}, "project_id"),
        ({"region": "us-central1.evil.example/"}, "region"),
        ({"region": 5}, "region"),
        ({"project_id": "byok-project\n"}, "project_id"),  # "$" in a regex lets "\n" by
        ({"region": "us-central1\n"}, "region"),
    ],
)
def test_a_malformed_service_account_is_400_and_nothing_reaches_a_url(
    change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        client_credentials(json.dumps({**SERVICE_ACCOUNT, **change}))
    assert raised.value.param == "X-Vertex-Credentials"
    assert problem in raised.value.message
    assert "PRIVATE KEY" not in raised.value.message


def test_a_region_is_kept_for_the_url() -> None:
    info = client_credentials(json.dumps({**SERVICE_ACCOUNT, "region": "europe-west4"}))
    assert isinstance(info, dict)
    assert info["region"] == "europe-west4"


def test_broken_json_is_400() -> None:
    with pytest.raises(InvalidRequest):
        client_credentials('{"type": "service_account",')
