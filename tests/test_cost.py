"""Estimated cost: catalog prices per image and per token, the ``X-Mesh-Cost-USD`` header of a
JSON answer and ``usage.cost_usd`` in a stream's final chunk."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from mesh_images_asgi.catalog import load_catalog
from mesh_images_asgi.cost import cost_headers, estimate, usd, with_cost
from tests.support.leaks import WATCH
from tests.support.ops import Scripted, ops_app, result

GEN = "/v1/images/generations"
TOKENS = {"prompt_tokens": 100, "completion_tokens": 1000, "total_tokens": 1100}


def entry(**prices: Any) -> Any:
    return load_catalog({"openai/gpt-image-2": prices}).resolve("openai/gpt-image-2")


@pytest.mark.parametrize(
    ("prices", "images", "usage", "expected"),
    [
        ({}, 1, None, None),  # no price: unknown, not zero
        ({}, 1, TOKENS, None),
        ({"price_per_image": 0.04}, 3, None, "0.12"),
        ({"price_per_image": 0.0}, 2, None, "0"),
        ({"price_per_image": 0.039}, 1, TOKENS, "0.039"),  # no token prices: tokens ignored
        ({"price_per_1m_output_tokens": 40.0}, 1, TOKENS, "0.04"),
        (
            {"price_per_1m_input_tokens": 5.0, "price_per_1m_output_tokens": 40.0},
            1,
            TOKENS,
            "0.0405",
        ),
        ({"price_per_1m_input_tokens": 5.0}, 1, None, None),  # tokens priced, none reported
        ({"price_per_1m_input_tokens": 5.0, "price_per_image": 0.02}, 2, TOKENS, "0.0405"),
        ({"price_per_1m_output_tokens": 10.0}, 1, {"completion_tokens": 1}, "0.00001"),
        ({"price_per_1m_output_tokens": 0.4}, 1, {"completion_tokens": 1}, "0"),  # rounds half-up
        ({"price_per_1m_output_tokens": 0.5}, 1, {"completion_tokens": 1}, "0.000001"),
        ({"price_per_1m_output_tokens": 40.0}, 1, {"completion_tokens": True}, None),
    ],
)
def test_the_estimate_sums_the_priced_terms(
    prices: dict[str, float], images: int, usage: dict[str, Any] | None, expected: str | None
) -> None:
    cost = estimate(entry(**prices), images, usage)
    assert (None if cost is None else usd(cost)) == expected


def test_prices_come_from_the_shipped_catalog_and_the_users_config() -> None:
    catalog = load_catalog()
    imagen = catalog.resolve("vertex/imagen-4")
    assert estimate(imagen, 2, None) == Decimal("0.08")
    assert estimate(catalog.resolve("local/sketch"), 4, None) == Decimal(0)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        entry(price_per_1m_input_tokens=-1.0)


def test_headers_and_stream_usage() -> None:
    assert cost_headers(None) == []
    assert cost_headers(Decimal("0.040000")) == [(b"x-mesh-cost-usd", b"0.04")]
    assert cost_headers(Decimal("100.000000")) == [(b"x-mesh-cost-usd", b"100")]
    assert with_cost(None, None) is None
    assert with_cost(TOKENS, None) == TOKENS
    assert with_cost(None, Decimal("0.04")) == {"cost_usd": 0.04}
    assert with_cost(TOKENS, Decimal("0.0405")) == {**TOKENS, "cost_usd": 0.0405}


@pytest.mark.anyio
async def test_a_json_answer_carries_the_cost_header_when_the_price_is_known() -> None:
    models = {"openai/gpt-image-2": {"price_per_image": 0.04}}
    async with ops_app(Scripted(), models) as (_, client):
        priced = await client.post(GEN, json={"model": "openai/gpt-image-2", "prompt": "a", "n": 2})
        unpriced = await client.post(GEN, json={"model": "openai/gpt-image-1.5", "prompt": "a"})
    assert priced.headers["x-mesh-cost-usd"] == "0.08"
    assert "x-mesh-cost-usd" not in unpriced.headers
    assert "usage" not in priced.json()  # the body stays the upstream's: no usage invented


@pytest.mark.anyio
async def test_a_stream_puts_the_cost_in_the_final_chunks_usage() -> None:
    models = {
        "openai/gpt-image-2": {"price_per_1m_input_tokens": 5.0, "price_per_1m_output_tokens": 40.0}
    }
    async with ops_app(Scripted(result(1, TOKENS)), models) as (_, client):
        response = await client.post(
            GEN, json={"model": "openai/gpt-image-2", "prompt": "a", "stream": True}
        )
    assert "x-mesh-cost-usd" not in response.headers  # sent before the cost is known
    events = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.split("\n\n")
        if line.startswith("data: {")
    ]
    final = events[-1]
    assert final["status"] == "completed"
    assert final["usage"] == {**TOKENS, "cost_usd": 0.0405}


@pytest.mark.anyio
async def test_client_credentials_bill_the_client() -> None:
    models = {"openai/gpt-image-2": {"price_per_image": 0.04}}
    async with ops_app(Scripted(), models) as (app, client):
        response = await client.post(
            GEN,
            json={"model": "openai/gpt-image-2", "prompt": "a"},
            headers={"x-openai-key": WATCH.secret("sk-client-0123456789abcdef")},
        )
        registry = app.metrics.registry
        labels = {"model": "openai/gpt-image-2", "provider": "openai"}
        client_cost = registry.get_sample_value(
            "mesh_images_cost_usd_total", {**labels, "billing": "client"}
        )
    assert response.status_code == 200
    assert response.headers["x-mesh-cost-usd"] == "0.04"
    assert client_cost == pytest.approx(0.04)
