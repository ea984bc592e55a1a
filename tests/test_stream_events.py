"""``_asgi/stream_events.py``: the two encodings of a stream's events."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._asgi.stream_events import MeshEvents, OpenAIEvents, stream_events
from mesh_images_asgi._domain.jobs import GenerationJob, JobKind, PartialImage
from mesh_images_asgi._domain.schemas import ImageRequest

PARTIAL = PartialImage(b64_json="cGFydGlhbA==", index=1)


def _job() -> GenerationJob:
    app = ImagesApp(Settings(local_latency=0))
    return app.service.prepare(ImageRequest(prompt="x", model="local/sketch", size="64x64"))


@pytest.mark.parametrize(
    ("kind", "prefix"), [("generation", "image_generation"), ("edit", "image_edit")]
)
def test_openai_event_names_come_from_the_jobs_kind(kind: JobKind, prefix: str) -> None:
    frame = stream_events(replace(_job(), kind=kind), "openai").partial(PARTIAL)
    name, data = frame.removesuffix(b"\n\n").split(b"\n")
    assert name == f"event: {prefix}.partial_image".encode()
    payload = json.loads(data.removeprefix(b"data: "))
    assert payload["type"] == f"{prefix}.partial_image"
    assert (payload["partial_image_index"], payload["size"], payload["background"]) == (
        1,
        "64x64",
        "auto",
    )


def test_each_dialect_has_its_encoder() -> None:
    assert isinstance(stream_events(_job(), "mesh"), MeshEvents)
    assert isinstance(stream_events(_job(), "openai"), OpenAIEvents)


def test_openai_error_event_carries_the_envelope_under_type_error() -> None:
    frame = stream_events(_job(), "openai").failed({"error": {"code": "x"}, "request_id": "r"})
    assert frame.startswith(b"event: error\ndata: ")
    payload = json.loads(frame.split(b"data: ", 1)[1])
    assert payload == {"type": "error", "error": {"code": "x"}, "request_id": "r"}
