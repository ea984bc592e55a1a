"""Checks against the chosen model's catalog entry: 400 ``invalid_request`` with ``param``."""

from __future__ import annotations

from typing import Any

import pytest

from mesh_images_asgi._core.errors import InvalidRequest, ValidationFailed
from mesh_images_asgi._domain.capabilities import check_request
from mesh_images_asgi._domain.catalog import load_catalog
from mesh_images_asgi._domain.schemas import ImageRequest
from tests.helpers import app_client

# (fields, param, a fragment the message must contain: what the model accepts)
UNSUPPORTED: list[tuple[dict[str, Any], str, str]] = [
    ({"n": 5, "model": "vertex/imagen-3"}, "n", "at most 4"),
    ({"size": "1004x1004"}, "size", "multiples of 8"),
    ({"size": "4096x4096"}, "size", "between 64 and 2048"),
    ({"size": "2048x256"}, "size", "at most 4 times"),
    ({"size": "21:9"}, "size", "16:9"),
    ({"size": "1536x1024", "model": "vertex/imagen-3"}, "size", "1408x768"),
    ({"size": "1792x1024", "model": "openai/gpt-image-1.5"}, "size", "1536x1024"),
    ({"quality": "ultra"}, "quality", "low, medium, high"),
    ({"quality": "hd", "model": "vertex/imagen-3"}, "quality", "auto"),
    ({"output_format": "webp", "model": "vertex/imagen-3"}, "output_format", "png, jpeg"),
    ({"partial_images": 2, "stream": True, "model": "vertex/imagen-3"}, "partial_images", "seed"),
    ({"guidance_scale": 5.0}, "guidance_scale", "accepts are"),
    ({"watermark": True}, "watermark", "accepts are"),
    ({"image": "data:image/png;base64,AAAA"}, "image", "accepts are"),
    ({"aspect_ratio": "16:9"}, "aspect_ratio", "accepts are"),
    ({"background": "transparent", "output_format": "jpeg"}, "background", "png"),
    ({"output_compression": 50}, "output_compression", "jpeg and webp"),
    ({"output_compression": 50, "output_format": "png"}, "output_compression", "jpeg and webp"),
    ({"prompt": "x" * 32001}, "prompt", "at most 32000"),
]


@pytest.mark.parametrize(("fields", "param", "fragment"), UNSUPPORTED)
def test_model_cannot_do_that(fields: dict[str, Any], param: str, fragment: str) -> None:
    catalog = load_catalog()
    body = {"prompt": "a fox", "model": "local/sketch", **fields}
    request = ImageRequest.model_validate(body)
    with pytest.raises(InvalidRequest) as raised:
        check_request(catalog.resolve(body["model"]), request)
    assert raised.value.param == param
    assert fragment in raised.value.message


def test_partial_images_without_stream_is_refused() -> None:
    entry = load_catalog().resolve("openai/gpt-image-2")
    request = ImageRequest.model_validate({"prompt": "x", "partial_images": 2})
    with pytest.raises(InvalidRequest) as raised:
        check_request(entry, request)
    assert raised.value.param == "partial_images"


def test_free_sizes_follow_the_model_rules() -> None:
    entry = load_catalog().resolve("openai/gpt-image-2")
    for size, ok in [
        ("2048x1152", True),
        ("3840x1280", True),
        ("1000x1000", False),
        ("3840x1264", False),
        ("512x512", False),
        ("4096x2048", False),
    ]:
        request = ImageRequest.model_validate({"prompt": "x", "size": size})
        if ok:
            check_request(entry, request)
        else:
            with pytest.raises(InvalidRequest):
                check_request(entry, request)


def test_unknown_fields_are_refused_for_models_that_cannot_take_them() -> None:
    catalog = load_catalog()
    request = ImageRequest.model_validate({"prompt": "x", "style": "vivid", "foo": 1})
    with pytest.raises(ValidationFailed) as raised:
        check_request(catalog.resolve("local/sketch"), request)
    assert raised.value.details is not None
    assert [d["loc"] for d in raised.value.details] == [["body", "style"], ["body", "foo"]]
    assert {d["type"] for d in raised.value.details} == {"extra_forbidden"}
    check_request(catalog.resolve("openai/gpt-image-2"), request)  # forwarded there


@pytest.mark.anyio
async def test_invalid_request_envelope_over_http() -> None:
    async with app_client() as client:
        response = await client.post(
            "/v1/images/generations",
            json={"model": "local/sketch", "prompt": "x", "size": "999x999"},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == "size"
    assert "1024x1024" in error["message"]
    assert response.headers["x-request-id"] == response.json()["request_id"]
