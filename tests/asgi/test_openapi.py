"""``/openapi.json``: generated from the pydantic models, served, and held to by the server.

schemathesis reads the served document and sends at least 1,000 generated requests (valid ones
and ones that break the schema) to a live gateway: no answer is a 5xx, every answer conforms to
the document, and every error is the envelope.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mesh_images_asgi import ImagesApp, ImagesMiddleware, Settings
from mesh_images_asgi._access.keys import hash_key, new_key
from mesh_images_asgi._asgi.openapi import openapi_document
from mesh_images_asgi._domain.schemas import ImageRequest
from mesh_images_asgi.main import create_app
from tests.helpers import app_client
from tests.support.fuzz import SMALL_LOCAL, assert_error_envelope
from tests.support.leaks import WATCH
from tests.support.live import serve

KEY = WATCH.secret(new_key())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = {GenerationMode.POSITIVE: 600, GenerationMode.NEGATIVE: 500}
CASES: Counter[str] = Counter()


def test_the_document_is_generated_from_the_request_model() -> None:
    document = openapi_document(auth=True, health=True)
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    request = schemas["ImageRequest"]
    assert request["properties"].keys() == ImageRequest.model_json_schema()["properties"].keys()
    assert request["required"] == ["prompt"]
    assert {"ImagesResponse", "ErrorEnvelope", "ModelList"} <= schemas.keys()
    generate = document["paths"]["/v1/images/generations"]["post"]
    assert generate["security"] == [{"bearer": []}]
    assert {"401", "403", "408", "422", "429"} <= generate["responses"].keys()
    assert "/healthz" in document["paths"]
    anonymous = openapi_document()
    assert "security" not in anonymous["paths"]["/v1/models"]["get"]
    assert "/healthz" not in anonymous["paths"]


@pytest.mark.anyio
async def test_it_is_served_without_a_key_by_the_standalone_app_only() -> None:
    keys = [{"hash": hash_key(KEY), "label": "docs"}]
    standalone = create_app(Settings(api_keys=keys))
    transport = httpx.ASGITransport(app=standalone)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        served = await client.get("/openapi.json")
    await standalone.aclose()
    assert served.status_code == 200
    assert served.json()["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
    async with app_client() as client:  # ImagesApp() without openapi=True
        assert (await client.get("/openapi.json")).status_code == 404

    async def host(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the host's own"})

    middleware = ImagesMiddleware(host)  # a host's /openapi.json stays the host's
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/openapi.json")).text == "the host's own"
    assert isinstance(middleware.images, ImagesApp)


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    settings = Settings(
        local_latency=0,
        default_model="local/sketch",
        models=SMALL_LOCAL,
        api_keys=[{"hash": hash_key(KEY), "label": "schemathesis"}],
    )
    with serve(create_app(settings)) as base:
        yield base


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda mode: mode.value)
def test_schemathesis_finds_no_5xx_and_only_envelopes(live: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    strategy = (
        schema.as_strategy(mode)
        if mode is GenerationMode.POSITIVE
        else schema["/v1/images/generations"]["POST"].as_strategy(mode)
    )
    session = requests.Session()
    headers = {"Authorization": f"Bearer {KEY}"}

    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=live, session=session, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)
        if response.status_code >= 300:
            first = {name: values[0] for name, values in response.headers.items()}
            assert_error_envelope(response.status_code, first, response.content)
        CASES[mode.value] += 1
        CASES[f"{mode.value} {response.status_code}"] += 1

    run()
    assert CASES[mode.value] >= EXAMPLES[mode] * 0.9


def test_schemathesis_sent_at_least_1000_cases() -> None:
    total = CASES["positive"] + CASES["negative"]
    if total == 0:
        pytest.skip("the schemathesis tests did not run (deselected)")
    assert total >= 1000, CASES
    assert CASES["positive 200"] > 0  # the generators reached real generations too
