"""The estimated cost of a generation in USD, from the catalog's prices.

    cost =  images            x price_per_image
         +  prompt_tokens     x price_per_1m_input_tokens  / 1,000,000
         +  completion_tokens x price_per_1m_output_tokens / 1,000,000

A term counts only when its price is in the catalog and, for tokens, when the upstream reported
them (OpenAI's GPT image models do; Vertex AI does not). With no term at all the cost is unknown:
None, never a made-up zero. Only the attempt that served the request is priced (failed attempts
are not billed upstream). The sum is rounded half-up to a millionth of a dollar.

It is an estimate from list prices: discounts, free tiers and BYOK platform fees are not known
here, and a model whose output is priced per image *and* per output token would be counted twice
(set one of them).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .catalog import ModelEntry

__all__ = ["COST_HEADER", "cost_headers", "estimate", "usd", "with_cost"]

COST_HEADER = b"x-mesh-cost-usd"
_MICRODOLLAR = Decimal("0.000001")
_MILLION = Decimal(1_000_000)


def _price(value: float) -> Decimal:
    return Decimal(repr(value))  # the catalog's decimal literal, not the binary float's expansion


def estimate(entry: ModelEntry, images: int, usage: Mapping[str, Any] | None) -> Decimal | None:
    """USD for ``images`` images and the upstream's ``usage`` on ``entry``; None when unknown."""
    total: Decimal | None = None
    if entry.price_per_image is not None:
        total = _price(entry.price_per_image) * images
    if usage:
        for price, field in (
            (entry.price_per_1m_input_tokens, "prompt_tokens"),
            (entry.price_per_1m_output_tokens, "completion_tokens"),
        ):
            tokens = usage.get(field)
            if price is not None and isinstance(tokens, int) and not isinstance(tokens, bool):
                total = (total or Decimal(0)) + _price(price) * tokens / _MILLION
    return None if total is None else total.quantize(_MICRODOLLAR, ROUND_HALF_UP)


def usd(cost: Decimal) -> str:
    """``cost`` as plain decimal text without trailing zeros: ``0.04``, ``0.01088``, ``0``."""
    return format(cost.normalize(), "f")


def cost_headers(cost: Decimal | None) -> list[tuple[bytes, bytes]]:
    """``X-Mesh-Cost-USD`` when the cost is known."""
    return [] if cost is None else [(COST_HEADER, usd(cost).encode())]


def with_cost(usage: Mapping[str, Any] | None, cost: Decimal | None) -> dict[str, Any] | None:
    """A stream's final ``usage``: the upstream's, plus ``cost_usd`` when the cost is known."""
    if cost is None:
        return None if usage is None else dict(usage)
    return {**(usage or {}), "cost_usd": float(cost)}
