"""How a catalog model is shown to clients: ``GET /v1/models`` and ``GET /v1/models/{id}``.

One function renders a model for both routes and both shapes, so that they never disagree:

- OpenAI's (the default): ``{"id", "object": "model", "created", "owned_by"}`` plus our fields
  (``type``, ``aliases``, ``description``, ``capabilities``, ``pricing``); the list is
  ``{"object": "list", "data": [...]}``.
- Mesh's (for the meshapi SDK, see ``_asgi/dialects.py``): the same object with the fields of the
  SDK's ``ModelInfo`` added (``name``, ``is_free``, ``provider``, ``model_type``, modalities, the
  ``supports_image_*`` flags, from the model's ``edits`` capabilities) and ``pricing`` in Mesh's
  form (decimal strings, as the SDK types them; a price table by quality and size goes in
  ``notes``); the list is a bare JSON array.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from mesh_images_asgi._asgi.dialects import Dialect
from mesh_images_asgi._domain.catalog import ModelEntry

__all__ = ["model_list", "model_object"]

_IMAGE_FLAGS = (
    "supports_image_edit",
    "supports_image_inpaint",
    "supports_image_outpaint",
    "supports_image_mix",
    "supports_image_reframe",
    "supports_image_upscale",
    "supports_image_remove_background",
    "supports_image_reference",
)


def _mesh_pricing(entry: ModelEntry) -> dict[str, Any] | None:
    """Mesh's ``pricing``: decimal strings; a price table by quality and size (which Mesh's
    fields cannot hold) is written out in ``notes``."""
    prices = entry.price_per_image
    if prices is None:
        return None
    pricing: dict[str, Any] = {"pricing_unit": "per_image"}
    if isinstance(prices, int | float):
        pricing["image_output_usd_per_image"] = f"{prices:g}"
    else:
        table = {quality: dict(sizes) for quality, sizes in prices.items()}
        pricing["notes"] = "USD per image by quality and size: " + orjson.dumps(table).decode()
    return pricing


def _edit_flags(entry: ModelEntry) -> dict[str, bool]:
    """The ``supports_image_*`` flags, from the model's ``edits`` capabilities."""
    edits = entry.edits
    flags = dict.fromkeys(_IMAGE_FLAGS, False)
    if edits is None or edits.retired is not None:
        return flags
    for operation in edits.operations:
        flags[f"supports_image_{operation}"] = True
    flags["supports_image_reference"] = edits.max_images > 1
    return flags


def _mesh_fields(entry: ModelEntry) -> dict[str, Any]:
    flags = _edit_flags(entry)
    return {
        "name": entry.id,
        "is_free": entry.price_per_image == 0,
        "provider": entry.provider,
        "model_type": "image",
        "input_modalities": ["text", "image"] if flags["supports_image_edit"] else ["text"],
        "output_modalities": ["image"],
        "pricing": _mesh_pricing(entry),
        **flags,
    }


def model_object(entry: ModelEntry, created: int, dialect: Dialect) -> dict[str, Any]:
    """One model, as ``GET /v1/models/{id}`` answers it and as the list holds it."""
    body = entry.public(created)
    if dialect == "mesh":
        body.update(_mesh_fields(entry))
    return body


def model_list(entries: Iterable[ModelEntry], created: int, dialect: Dialect) -> Any:
    """The ``GET /v1/models`` body."""
    models = [model_object(entry, created, dialect) for entry in entries]
    if dialect == "mesh":
        return models
    return {"object": "list", "data": models}
