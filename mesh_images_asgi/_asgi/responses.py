"""Provider results -> the bodies our clients receive (the JSON response, and the body of a Mesh
stream's final chunk, which is the same object with the chunk's fields added); ``send_json``
writes a JSON answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from mesh_images_asgi._core.asgi import Send, send_bytes
from mesh_images_asgi._domain.jobs import GeneratedImage, GenerationJob, ProviderResult

__all__ = ["image_items", "images_response", "send_json"]

_JSON = b"application/json"


async def send_json(
    send: Send,
    status: int,
    payload: Mapping[str, Any],
    request_id: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """Send ``payload`` as the whole JSON answer, with ``x-request-id``; returns its size."""
    body = orjson.dumps(payload)
    await send_bytes(
        send, status, body, _JSON, [(b"x-request-id", request_id.encode()), *(headers or [])]
    )
    return len(body)


def _item(image: GeneratedImage, job: GenerationJob, fmt: str) -> dict[str, Any]:
    item: dict[str, Any]
    wants_b64 = job.request.response_format == "b64_json" or job.entry.b64_json_only
    if wants_b64 and image.b64_json is not None:
        item = {"b64_json": image.b64_json}
    elif image.b64_json is not None:
        item = {"url": f"data:image/{fmt};base64,{image.b64_json}"}
    else:
        item = {"url": image.url}
    if image.revised_prompt is not None:
        item["revised_prompt"] = image.revised_prompt
    return item


def image_items(
    job: GenerationJob, images: list[GeneratedImage], output_format: str | None = None
) -> list[dict[str, Any]]:
    """The ``data`` array: ``b64_json`` when asked, else a URL (a ``data:`` URL for base64)."""
    fmt = output_format or job.output_format
    return [_item(image, job, fmt) for image in images]


def images_response(job: GenerationJob, result: ProviderResult) -> dict[str, Any]:
    """The non-streaming body; optional fields only when the upstream returned them."""
    body: dict[str, Any] = {
        "created": result.created,
        "data": image_items(job, result.images, result.output_format),
    }
    optional = (
        ("background", result.background),
        ("output_format", result.output_format),
        ("quality", result.quality),
        ("size", result.size),
        ("usage", None if result.usage is None else result.usage.as_json()),
    )
    body.update((key, value) for key, value in optional if value is not None)
    return body
