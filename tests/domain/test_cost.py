"""Estimated cost: catalog prices per image (one number, or by quality and size) and per token,
the ``X-Mesh-Cost-USD`` header of a JSON answer, ``usage.cost_usd`` in a stream's final chunk and
the cost metric. The shipped prices are checked against figures worked out by hand from the
published price lists (cited at each test)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from mesh_images_asgi._domain.catalog import load_catalog
from mesh_images_asgi._domain.cost import cost_headers, cost_of, estimate, usd, with_cost
from mesh_images_asgi._domain.jobs import GeneratedImage, GenerationJob, ProviderResult
from mesh_images_asgi._domain.schemas import ImageRequest
from mesh_images_asgi._domain.usage import Usage
from tests.support.leaks import WATCH
from tests.support.ops import Scripted, ops_app, result

GEN = "/v1/images/generations"
TOKENS = Usage(prompt_tokens=100, completion_tokens=1000, total_tokens=1100)


UNPRICED = "openai/gpt-image-2.5-sunburst"  # no price shipped: each test sets its own


def entry(**prices: Any) -> Any:
    return load_catalog({UNPRICED: prices}).resolve(UNPRICED)


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
        # usage reported and tokens priced: the token price, not the image price as well
        ({"price_per_1m_input_tokens": 5.0, "price_per_image": 0.02}, 2, TOKENS, "0.0005"),
        ({"price_per_1m_input_tokens": 5.0, "price_per_image": 0.02}, 2, None, "0.04"),
        ({"price_per_1m_output_tokens": 10.0}, 1, Usage(0, 1, 1), "0.00001"),
        ({"price_per_1m_output_tokens": 0.4}, 1, Usage(0, 1, 1), "0"),  # rounds half-up
        ({"price_per_1m_output_tokens": 0.5}, 1, Usage(0, 1, 1), "0.000001"),
    ],
)
def test_the_estimate_uses_the_token_or_the_image_price(
    prices: dict[str, float], images: int, usage: Usage | None, expected: str | None
) -> None:
    cost = estimate(entry(**prices), images, usage)
    assert (None if cost is None else usd(cost)) == expected


def test_prices_come_from_the_shipped_catalog_and_the_users_config() -> None:
    catalog = load_catalog()
    imagen = catalog.resolve("vertex/imagen-4")  # a flat price_per_image is still accepted
    assert estimate(imagen, 2, None) == Decimal("0.08")
    assert estimate(catalog.resolve("local/sketch"), 4, None) == Decimal(0)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        entry(price_per_1m_input_tokens=-1.0)


def test_headers_and_stream_usage() -> None:
    assert cost_headers(None) == []
    assert cost_headers(Decimal("0.040000")) == [(b"x-mesh-cost-usd", b"0.04")]
    assert cost_headers(Decimal("100.000000")) == [(b"x-mesh-cost-usd", b"100")]
    assert with_cost(None, None) is None
    assert with_cost(TOKENS, None) == TOKENS.as_json()
    assert with_cost(None, Decimal("0.04")) == {"cost_usd": 0.04}
    assert with_cost(TOKENS, Decimal("0.0405")) == {**TOKENS.as_json(), "cost_usd": 0.0405}


@pytest.mark.anyio
async def test_a_json_answer_carries_the_cost_header_when_the_price_is_known() -> None:
    models = {"openai/gpt-image-2": {"price_per_image": 0.04}}
    async with ops_app(Scripted(), models) as (_, client):
        priced = await client.post(GEN, json={"model": "openai/gpt-image-2", "prompt": "a", "n": 2})
        unpriced = await client.post(GEN, json={"model": UNPRICED, "prompt": "a"})
    assert priced.headers["x-mesh-cost-usd"] == "0.08"
    assert "x-mesh-cost-usd" not in unpriced.headers
    assert "usage" not in priced.json()  # the body stays the upstream's: no usage invented


@pytest.mark.anyio
async def test_a_stream_puts_the_cost_in_the_final_chunks_usage() -> None:
    models = {UNPRICED: {"price_per_1m_input_tokens": 5.0, "price_per_1m_output_tokens": 40.0}}
    async with ops_app(Scripted(result(1, TOKENS)), models) as (_, client):
        response = await client.post(GEN, json={"model": UNPRICED, "prompt": "a", "stream": True})
    assert "x-mesh-cost-usd" not in response.headers  # sent before the cost is known
    events = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.split("\n\n")
        if line.startswith("data: {")
    ]
    final = events[-1]
    assert final["status"] == "completed"
    assert final["usage"] == {**TOKENS.as_json(), "cost_usd": 0.0405}


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


# --- the shipped prices, one test per pricing shape -------------------------------------------


def answer(model: str, request: dict[str, Any], n: int = 1, **result: Any) -> Decimal | None:
    """The cost of an upstream answer of ``n`` images to ``request`` on the shipped ``model``."""
    entry = load_catalog().resolve(model)
    image_request = ImageRequest.model_validate({"prompt": "a", "model": model, **request})
    job = GenerationJob(entry, image_request, entry.resolve_size(image_request.size), "png")
    images = [GeneratedImage(b64_json="aQ==") for _ in range(n)]
    return cost_of(job, ProviderResult(images=images, created=1, **result))


def test_per_image_by_quality_and_size_gpt_image_1_5() -> None:
    # OpenAI's pricing page (as quoted in _domain/models.toml's source): GPT Image 1.5 costs $0.009
    # /
    # $0.034 / $0.133 per 1024x1024 image at low / medium / high, and $0.013 / $0.05 / $0.20 per
    # 1536x1024 or 1024x1536 image.
    model = "openai/gpt-image-1.5"
    assert answer(model, {"quality": "high", "size": "1536x1024"}, n=2) == Decimal("0.4")  # 2x0.20
    assert answer(model, {"quality": "low", "size": "1024x1536"}, n=3) == Decimal("0.039")  # 3x.013
    # quality auto: the quality and size the upstream says it rendered are the ones priced
    rendered = answer(model, {}, quality="medium", size="1024x1024")
    assert rendered == Decimal("0.034")
    assert answer(model, {}) is None  # auto, and the answer does not say: unknown, not zero


def test_per_image_by_quality_and_size_gpt_image_1_mini() -> None:
    # OpenAI's pricing page: gpt-image-1-mini $0.005 / $0.011 / $0.036 per square image, $0.006 /
    # $0.015 / $0.052 per portrait or landscape one.
    model = "openai/gpt-image-1-mini"
    assert answer(model, {"quality": "medium", "size": "1024x1024"}, n=4) == Decimal("0.044")
    assert answer(model, {"quality": "high", "size": "1536x1024"}) == Decimal("0.052")


def test_per_token_when_the_upstream_reports_usage_gpt_image_1_5() -> None:
    # OpenAI: text input $5 and image output $32 per million tokens; a high-quality 1024x1024
    # image is 4160 output tokens (the image generation guide's table). 50 prompt tokens:
    #   50 x 5 / 1e6 + 4160 x 32 / 1e6 = 0.00025 + 0.13312 = 0.13337
    # (the per-image price, $0.133, is that figure rounded: it is not added on top).
    usage = Usage(prompt_tokens=50, completion_tokens=4160, total_tokens=4210)
    cost = answer("openai/gpt-image-1.5", {"quality": "high"}, usage=usage, size="1024x1024")
    assert cost == Decimal("0.13337")


def test_per_token_gpt_image_2() -> None:
    # OpenAI: gpt-image-2 text input $5, image output $30 per million tokens.
    #   120 x 5 / 1e6 + 1056 x 30 / 1e6 = 0.0006 + 0.03168 = 0.03228
    usage = Usage(prompt_tokens=120, completion_tokens=1056, total_tokens=1176)
    assert answer("openai/gpt-image-2", {}, usage=usage) == Decimal("0.03228")
    assert answer("openai/gpt-image-2", {}) is None  # no usage and no image price: unknown


def test_per_image_by_size_tier_gemini() -> None:
    # Google's Gemini API pricing (as quoted in _domain/models.toml's source): Gemini 3 Pro Image
    # costs
    # $0.134 per 1K or 2K image and $0.24 per 4K image; Gemini 3.1 Flash Image $0.067 per 1K one.
    # Gemini reports usage too, but no token price is shipped: the image price applies.
    usage = Usage(prompt_tokens=12, completion_tokens=1290, total_tokens=1302)
    pro = "vertex/gemini-3-pro-image"
    assert answer(pro, {"size": "16:9"}, usage=usage) == Decimal("0.134")  # 1376x768, 1K
    assert answer(pro, {"size": "2752x1536"}) == Decimal("0.134")  # 16:9 at 2K
    assert answer(pro, {"size": "4096x4096"}) == Decimal("0.24")  # 1:1 at 4K
    flash = "vertex/gemini-3.1-flash-image"
    assert answer(flash, {"size": "1:1"}) == Decimal("0.067")
    assert answer(flash, {"size": "2048x2048"}) is None  # no 2K price read: unknown


def test_a_price_table_is_checked_when_the_catalog_loads() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        entry(price_per_image={"high": {"1024x1024": -0.1}})
    table = entry(price_per_image={"high": {"1024x1024": 0.1}})
    assert table.image_price("high", "1024x1024") == 0.1
    assert table.image_price("low", "1024x1024") is None
    assert table.public(0)["pricing"]["usd_by_quality_and_size"] == {"high": {"1024x1024": 0.1}}
