"""The estimated cost of a generation in USD, from the catalog's prices.

One of two prices applies, never both:

- **tokens**, when the upstream reported usage and the model has token prices (OpenAI's GPT
  image models report it; Gemini image models on Vertex too)::

      prompt_tokens x price_per_1m_input_tokens / 1,000,000
    + completion_tokens x price_per_1m_output_tokens / 1,000,000

- **per image** otherwise: ``images x price_per_image``, where ``price_per_image`` is one number
  or a table by quality then size (OpenAI prices gpt-image models by both; Google prices Gemini
  image models by output size). The quality and size are the ones the upstream says it rendered
  (``quality``/``size`` of its answer) or else the request's resolved ones.

With no applicable price (a table without that quality and size, a model with no price) the cost
is unknown: None, never a made-up zero. Only the attempt that served the request is priced
(failed attempts are not billed upstream). The sum is rounded half-up to a millionth of a dollar.

It is an estimate from list prices: discounts, free tiers, batch prices and BYOK platform fees are
not known here, and token prices are one rate per direction (image input tokens, which edits
send, are priced at the input rate).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from mesh_images_asgi._domain.catalog import ModelEntry
from mesh_images_asgi._domain.usage import Usage

if TYPE_CHECKING:
    from mesh_images_asgi._domain.jobs import GenerationJob, ProviderResult

__all__ = ["COST_HEADER", "cost_headers", "cost_of", "estimate", "usd", "with_cost"]

COST_HEADER = b"x-mesh-cost-usd"
_MICRODOLLAR = Decimal("0.000001")
_MILLION = Decimal(1_000_000)


def _price(value: float) -> Decimal:
    return Decimal(repr(value))  # the catalog's decimal literal, not the binary float's expansion


def _token_cost(entry: ModelEntry, usage: Usage | None) -> Decimal | None:
    if usage is None:
        return None
    total: Decimal | None = None
    for price, tokens in (
        (entry.price_per_1m_input_tokens, usage.prompt_tokens),
        (entry.price_per_1m_output_tokens, usage.completion_tokens),
    ):
        if price is not None:
            total = (total or Decimal(0)) + _price(price) * tokens / _MILLION
    return total


def estimate(
    entry: ModelEntry,
    images: int,
    usage: Usage | None,
    *,
    quality: str | None = None,
    size: str | None = None,
) -> Decimal | None:
    """USD for ``images`` images of ``quality`` and ``size`` and the upstream's ``usage`` on
    ``entry``; None when unknown."""
    total = _token_cost(entry, usage)
    if total is None:
        price = entry.image_price(quality, size)
        total = None if price is None else _price(price) * images
    return None if total is None else total.quantize(_MICRODOLLAR, ROUND_HALF_UP)


def cost_of(job: GenerationJob, result: ProviderResult) -> Decimal | None:
    """The cost of ``result``, the answer to ``job``: the size and quality the upstream says it
    rendered, else the ones asked for."""
    return estimate(
        job.entry,
        len(result.images),
        result.usage,
        quality=result.quality or job.request.quality,
        size=result.size or job.size,
    )


def usd(cost: Decimal) -> str:
    """``cost`` as plain decimal text without trailing zeros: ``0.04``, ``0.01088``, ``0``."""
    return format(cost.normalize(), "f")


def cost_headers(cost: Decimal | None) -> list[tuple[bytes, bytes]]:
    """``X-Mesh-Cost-USD`` when the cost is known."""
    return [] if cost is None else [(COST_HEADER, usd(cost).encode())]


def with_cost(usage: Usage | None, cost: Decimal | None) -> dict[str, Any] | None:
    """A stream's final ``usage``: the upstream's, plus ``cost_usd`` when the cost is known."""
    body = None if usage is None else usage.as_json()
    if cost is None:
        return body
    return {**(body or {}), "cost_usd": float(cost)}
