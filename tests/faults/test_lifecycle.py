"""Model lifecycle over real HTTP, against the Vertex AI emulator (which, like Vertex today,
answers 404 for the ids Google shut down): the GA ids are called, retired models are refused,
replaced or served as ``MESH_IMAGES_RETIRED_MODELS`` says, deprecated ones carry ``Deprecation``
and ``Sunset`` headers and one access-log warning."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from mesh_images_asgi._observe.accesslog import LOGGER_NAME
from tests.faults.conftest import Gateway, Upstreams, error_of, sse_events

Make = Callable[..., AbstractContextManager[Gateway]]
GENERATE = ":generateContent"


def called(upstreams: Upstreams) -> list[str]:
    """The upstream model:method of each Vertex request."""
    return [request.path.rsplit("/", 1)[1] for request in upstreams.vertex.requests]


def image_config(upstreams: Upstreams, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = upstreams.vertex.requests[index].body
    image: dict[str, Any] = body["generationConfig"].get("imageConfig", {})
    return image


@pytest.mark.parametrize(
    ("model", "upstream"),
    [
        ("vertex/gemini-3-pro-image", "gemini-3-pro-image"),
        ("vertex/gemini-3-pro-image-preview", "gemini-3-pro-image"),  # the old id: an alias
        ("vertex/nano-banana-pro", "gemini-3-pro-image"),
        ("vertex/gemini-3.1-flash-image", "gemini-3.1-flash-image"),
        ("vertex/gemini-3.1-flash-image-preview", "gemini-3.1-flash-image"),
        ("vertex/gemini-3.1-flash-lite-image", "gemini-3.1-flash-lite-image"),
    ],
)
def test_gemini_models_call_the_ga_ids(
    gateway: Gateway, upstreams: Upstreams, model: str, upstream: str
) -> None:
    response = gateway.post({"model": model, "size": "16:9"})
    assert response.status_code == 200, response.text
    assert called(upstreams) == [upstream + GENERATE]
    assert image_config(upstreams)["aspectRatio"] == "16:9"


@pytest.mark.parametrize(
    ("model", "replacement", "date"),
    [
        ("vertex/imagen-4", "vertex/gemini-3.1-flash-image", "2026-08-17"),
        ("vertex/imagen-4.0-ultra-generate-001", "vertex/gemini-3-pro-image", "2026-08-17"),
        ("vertex/nano-banana", "vertex/gemini-3.1-flash-image", "2026-10-02"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_a_retired_model_is_refused_with_its_replacement_and_no_upstream_call(
    gateway: Gateway, upstreams: Upstreams, model: str, replacement: str, date: str, stream: bool
) -> None:
    response = gateway.post({"model": model, "stream": stream})
    assert response.status_code == 410, response.text
    error = error_of(response)
    assert (error["code"], error["param"]) == ("model_retired", "model")
    assert replacement in error["message"]
    assert date in error["message"]
    assert upstreams.vertex.requests == []


def test_replace_serves_the_replacement_at_the_size_the_request_meant(
    make_gateway: Make, upstreams: Upstreams
) -> None:
    with make_gateway(retired_models="replace") as gw:
        # Imagen 3's 1408x768 is 16:9 at 1K: Gemini 3.1 Flash Image renders that as 1376x768.
        imagen = gw.post({"model": "vertex/imagen-3", "size": "1408x768"})
        # Imagen 4 Ultra's 2816x1536 is 16:9 at 2K: Gemini 3 Pro Image's 2752x1536.
        ultra = gw.post({"model": "vertex/imagen-4-ultra", "size": "2816x1536"})
    assert imagen.status_code == 200, imagen.text
    assert imagen.headers["x-mesh-routing-model"] == "vertex/gemini-3.1-flash-image"
    assert ultra.headers["x-mesh-routing-model"] == "vertex/gemini-3-pro-image"
    assert called(upstreams) == [
        "gemini-3.1-flash-image" + GENERATE,
        "gemini-3-pro-image" + GENERATE,
    ]
    assert image_config(upstreams, 0) == {"aspectRatio": "16:9", "imageSize": "1K"}
    assert image_config(upstreams, 1) == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert imagen.json()["data"][0]["b64_json"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 4}, "n"),  # Imagen made 4 at once; Gemini makes 1
        ({"watermark": False}, "watermark"),  # an Imagen-only option
    ],
)
def test_replace_keeps_what_the_replacement_cannot_do_a_clear_400(
    make_gateway: Make, upstreams: Upstreams, body: dict[str, Any], param: str
) -> None:
    with make_gateway(retired_models="replace") as gw:
        response = gw.post({"model": "vertex/imagen-3", **body})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["code"], error["param"]) == ("invalid_request", param)
    assert "vertex/imagen-3.0-generate-002" in error["message"]
    assert "vertex/gemini-3.1-flash-image" in error["message"]
    assert upstreams.vertex.requests == []


def test_serve_calls_the_retired_upstream_id(make_gateway: Make, upstreams: Upstreams) -> None:
    upstreams.vertex.still_serving("imagen-4.0-generate-001")
    with make_gateway(retired_models="serve") as gw:
        served = gw.post({"model": "vertex/imagen-4", "size": "1408x768"})
        gone = gw.post({"model": "vertex/imagen-3"})  # this project no longer has it
    assert served.status_code == 200, served.text
    assert served.headers["x-mesh-routing-model"] == "vertex/imagen-4.0-generate-001"
    assert called(upstreams)[0] == "imagen-4.0-generate-001:predict"
    assert upstreams.vertex.requests[0].body["parameters"]["aspectRatio"] == "16:9"
    assert gone.status_code == 502  # Vertex's 404, as any unknown model: the old id was called
    assert called(upstreams)[1] == "imagen-3.0-generate-002:predict"


DEPRECATED = {
    "vertex/gemini-3.1-flash-image": {
        "status": "deprecated",
        "shutdown_date": "2027-01-15",
        "replacement": "vertex/gemini-3-pro-image",
    }
}


def test_a_deprecated_model_is_served_with_deprecation_and_sunset_headers_and_one_warning(
    make_gateway: Make, upstreams: Upstreams, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    with make_gateway(models=DEPRECATED) as gw:
        first = gw.post({"model": "vertex/gemini-3.1-flash-image"})
        stream = gw.post({"model": "vertex/nano-banana-2", "stream": True})
        other = gw.post({"model": "vertex/gemini-3-pro-image"})
    for response in (first, stream):
        assert response.status_code == 200, response.text
        # 2027-01-15T00:00:00Z is 1799971200 s after the epoch (RFC 9745's @-date)
        assert response.headers["deprecation"] == "@1799971200"
        assert response.headers["sunset"] == "Fri, 15 Jan 2027 00:00:00 GMT"  # RFC 8594
    assert sse_events(stream.text)[-1]["status"] == "completed"
    assert "deprecation" not in other.headers
    assert "sunset" not in other.headers
    assert called(upstreams)[0] == "gemini-3.1-flash-image" + GENERATE
    warnings = [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == LOGGER_NAME and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1  # once per model, not once per request
    assert warnings[0]["event"] == "model_deprecated"
    assert warnings[0]["model"] == "vertex/gemini-3.1-flash-image"
    assert warnings[0]["shutdown_date"] == "2027-01-15"
    assert warnings[0]["replacement"] == "vertex/gemini-3-pro-image"


def test_the_model_list_shows_lifecycles_and_hides_retired_models_unless_asked(
    gateway: Gateway,
) -> None:
    listed = httpx.get(gateway.url + "/v1/models", timeout=10).json()["data"]
    everything = httpx.get(
        gateway.url + "/v1/models", params={"include_retired": "true"}, timeout=10
    ).json()["data"]
    ids = {model["id"] for model in listed}
    assert "vertex/gemini-3.1-flash-image" in ids
    assert "vertex/imagen-4.0-generate-001" not in ids
    retired = {model["id"]: model for model in everything if model["id"] not in ids}
    assert retired["vertex/imagen-4.0-generate-001"]["lifecycle"] == {
        "status": "retired",
        "shutdown_date": "2026-08-17",
        "replacement": "vertex/gemini-3.1-flash-image",
    }
    assert all(model["lifecycle"]["status"] == "retired" for model in retired.values())
    for model in everything:
        assert set(model["lifecycle"]) == {"status", "shutdown_date", "replacement"}
