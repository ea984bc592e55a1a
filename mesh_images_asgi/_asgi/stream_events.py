"""The events of an image stream, encoded in one of the two dialects (``_asgi/dialects.py``).

The stream writer (``_asgi/sse.py``) posts the same four things whatever the client: the opening,
each
partial image, the result, or an error. Each dialect turns them into SSE bytes:

=========== ============================================ ===========================================
            Mesh (default)                               OpenAI (the openai SDK, or asked for)
=========== ============================================ ===========================================
opening     ``data:`` chunk ``"status": "processing"``   ``: ping`` (OpenAI has no such event)
partial     ``data:`` chunk ``"status": "partial"``      ``event: image_generation.partial_image``
result      one ``data:`` chunk ``"status":              one ``event: image_generation.completed``
            "completed"`` with every image, ``model``,   per image, ``b64_json``, ``usage`` (the
            ``routing`` and ``usage`` (with cost)        upstream's total on the last one)
error       ``data: {"error": {...}, "request_id"}``     ``event: error`` ``data: {"type": "error",
                                                         "error": {...}, "request_id"}``
=========== ============================================ ===========================================

Both dialects keep the ``: ping`` keep-alives and end with ``data: [DONE]`` (which the openai SDK
reads as the end too). The OpenAI event names come from the job's kind: ``image_generation.*``
for a generation, ``image_edit.*`` for an edit. OpenAI's fields that the upstream did not return
are filled from the request (``size``, ``quality``, ``background``, ``output_format``, with
``"auto"`` where nothing was asked); ``usage`` is all zeros when the upstream reports none
(Vertex, the local renderer). The openai SDK raises an ``APIError`` carrying ``error``'s
``code``, ``type``, ``message`` and ``param`` for the error event, as for any event with an
``error`` object.
"""

from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import Any, Protocol

import orjson

from mesh_images_asgi._asgi.dialects import Dialect
from mesh_images_asgi._asgi.responses import image_items, images_response
from mesh_images_asgi._domain.cost import with_cost
from mesh_images_asgi._domain.jobs import GeneratedImage, GenerationJob, JobKind, PartialImage
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi._routing.router import Routed

__all__ = ["DONE", "PING", "StreamEvents", "data_event", "stream_events"]

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def data_event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _named_event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\n" + data_event(payload)


class StreamEvents(Protocol):
    """The encoding of one stream's events."""

    def opening(self) -> bytes:
        """What goes out at once, before the upstream answers."""
        ...

    def partial(self, partial: PartialImage) -> bytes: ...

    def completed(self, routed: Routed, cost: Decimal | None) -> bytes:
        """The result: every image, and what the generation used and cost."""
        ...

    def failed(self, error: dict[str, Any]) -> bytes:
        """``error``: ``{"error": {...}, "request_id": ...}`` (and ``routing`` when routed)."""
        ...


class MeshEvents:
    """Mesh's ``image.chunk`` events (the seed's format)."""

    def __init__(self, job: GenerationJob) -> None:
        self._job = job
        self._base: dict[str, Any] = {
            "id": "img-" + os.urandom(12).hex(),
            "object": "image.chunk",
            "created": int(time.time()),
            "model": job.entry.id,
        }

    def opening(self) -> bytes:
        return data_event({**self._base, "data": [], "status": "processing"})

    def partial(self, partial: PartialImage) -> bytes:
        items = image_items(self._job, [GeneratedImage(b64_json=partial.b64_json)])
        chunk = {**self._base, "data": items, "status": "partial"}
        chunk["partial_image_index"] = partial.index
        return data_event(chunk)

    def completed(self, routed: Routed, cost: Decimal | None) -> bytes:
        chunk = {**images_response(routed.job, routed.result), **self._base}
        chunk["status"] = "completed"
        chunk["model"] = routed.routing.model
        chunk["routing"] = routed.routing.public()
        usage = with_cost(routed.result.usage, cost)
        if usage is not None:
            chunk["usage"] = usage
        return data_event(chunk)

    def failed(self, error: dict[str, Any]) -> bytes:
        return data_event(error)


_PREFIXES: dict[JobKind, str] = {"generation": "image_generation", "edit": "image_edit"}
_NO_USAGE: dict[str, Any] = {
    "input_tokens": 0,
    "output_tokens": 0,
    "total_tokens": 0,
    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
}


def _openai_usage(usage: Usage | None) -> dict[str, Any]:
    """Our ``usage`` (``prompt_tokens``...) back in the names of OpenAI's image events."""
    if usage is None:
        return dict(_NO_USAGE)
    return {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "input_tokens_details": usage.details.get(
            "input_tokens_details", _NO_USAGE["input_tokens_details"]
        ),
    }


class OpenAIEvents:
    """OpenAI's typed image stream events (``ImageGenStreamEvent`` / ``ImageEditStreamEvent``)."""

    def __init__(self, job: GenerationJob) -> None:
        self._job = job
        self._prefix = _PREFIXES[job.kind]

    def _settings(self, routed: Routed | None) -> dict[str, Any]:
        job = self._job if routed is None else routed.job
        result = None if routed is None else routed.result
        request = job.request
        return {
            "created_at": int(time.time()),
            "size": (result and result.size) or job.size or "auto",
            "quality": (result and result.quality) or request.quality or "auto",
            "background": (result and result.background) or request.background or "auto",
            "output_format": (result and result.output_format) or job.output_format,
        }

    def opening(self) -> bytes:
        return PING

    def partial(self, partial: PartialImage) -> bytes:
        name = f"{self._prefix}.partial_image"
        payload = {"type": name, "b64_json": partial.b64_json, **self._settings(None)}
        payload["partial_image_index"] = partial.index
        return _named_event(name, payload)

    def completed(self, routed: Routed, cost: Decimal | None) -> bytes:
        name = f"{self._prefix}.completed"
        settings = self._settings(routed)
        images = routed.result.images
        frames = []
        for number, image in enumerate(images, 1):
            payload: dict[str, Any] = {"type": name}
            if image.b64_json is not None:
                payload["b64_json"] = image.b64_json
            else:  # an upstream that answered a URL only
                payload["url"] = image.url
            payload.update(settings)
            last = number == len(images)
            payload["usage"] = _openai_usage(routed.result.usage if last else None)
            frames.append(_named_event(name, payload))
        return b"".join(frames)

    def failed(self, error: dict[str, Any]) -> bytes:
        return _named_event("error", {"type": "error", **error})


def stream_events(job: GenerationJob, dialect: Dialect) -> StreamEvents:
    """The encoding of ``job``'s stream in ``dialect``."""
    return OpenAIEvents(job) if dialect == "openai" else MeshEvents(job)
