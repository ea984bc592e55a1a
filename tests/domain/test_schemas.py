"""Schema validation (422 ``validation_error``): every field, valid and invalid values."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import app_client

MODEL = "local/sketch"

# (body fields besides model/prompt, expected loc of the single detail, expected type)
INVALID: list[tuple[dict[str, Any], list[Any], str]] = [
    ({"prompt": None}, ["body", "prompt"], "string_type"),
    ({"prompt": ""}, ["body", "prompt"], "string_too_short"),
    ({"prompt": "   \n\t"}, ["body", "prompt"], "value_error"),
    ({"prompt": 42}, ["body", "prompt"], "string_type"),
    ({"model": 7}, ["body", "model"], "string_type"),
    ({"model": ""}, ["body", "model"], "string_too_short"),
    ({"n": 0}, ["body", "n"], "greater_than_equal"),
    ({"n": 11}, ["body", "n"], "less_than_equal"),
    ({"n": "2"}, ["body", "n"], "int_type"),
    ({"n": 2.0}, ["body", "n"], "int_type"),
    ({"n": True}, ["body", "n"], "int_type"),
    ({"size": "big"}, ["body", "size"], "string_pattern_mismatch"),
    ({"size": "1024*1024"}, ["body", "size"], "string_pattern_mismatch"),
    ({"size": "0x1024"}, ["body", "size"], "string_pattern_mismatch"),
    ({"size": 1024}, ["body", "size"], "string_type"),
    ({"quality": "Ultra HD"}, ["body", "quality"], "string_pattern_mismatch"),
    ({"quality": 3}, ["body", "quality"], "string_type"),
    ({"response_format": "png"}, ["body", "response_format"], "literal_error"),
    ({"response_format": None}, ["body", "response_format"], "literal_error"),
    ({"output_format": "gif"}, ["body", "output_format"], "literal_error"),
    ({"output_format": "PNG"}, ["body", "output_format"], "literal_error"),
    ({"output_compression": -1}, ["body", "output_compression"], "greater_than_equal"),
    ({"output_compression": 101}, ["body", "output_compression"], "less_than_equal"),
    ({"output_compression": "80"}, ["body", "output_compression"], "int_type"),
    ({"background": "white"}, ["body", "background"], "literal_error"),
    ({"moderation": "high"}, ["body", "moderation"], "literal_error"),
    ({"partial_images": 4}, ["body", "partial_images"], "less_than_equal"),
    ({"partial_images": -1}, ["body", "partial_images"], "greater_than_equal"),
    ({"seed": -2}, ["body", "seed"], "greater_than_equal"),
    ({"seed": 2**31}, ["body", "seed"], "less_than_equal"),
    ({"seed": "7"}, ["body", "seed"], "int_type"),
    ({"user": 5}, ["body", "user"], "string_type"),
    ({"user": "u" * 257}, ["body", "user"], "string_too_long"),
    ({"stream": "yes"}, ["body", "stream"], "bool_type"),
    ({"stream": 1}, ["body", "stream"], "bool_type"),
    ({"aspect_ratio": "wide"}, ["body", "aspect_ratio"], "string_pattern_mismatch"),
    ({"guidance_scale": 0.5}, ["body", "guidance_scale"], "greater_than_equal"),
    ({"guidance_scale": 11}, ["body", "guidance_scale"], "less_than_equal"),
    ({"watermark": "no"}, ["body", "watermark"], "bool_type"),
    (
        {"sequential_image_generation": "on"},
        ["body", "sequential_image_generation"],
        "literal_error",
    ),
    ({"optimize_prompt_options": []}, ["body", "optimize_prompt_options"], "dict_type"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("fields", "loc", "error_type"), INVALID)
async def test_schema_violation_is_422_with_details(
    fields: dict[str, Any], loc: list[Any], error_type: str
) -> None:
    body = {"model": MODEL, "prompt": "a red fox", **fields}
    async with app_client() as client:
        response = await client.post("/v1/images/generations", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["error"]["code"] == "validation_error"
    assert payload["request_id"] == response.headers["x-request-id"]
    details = payload["error"]["details"]
    assert [(d["loc"], d["type"]) for d in details] == [(loc, error_type)]
    assert all(isinstance(d["msg"], str) and d["msg"] for d in details)


@pytest.mark.anyio
async def test_every_problem_is_listed() -> None:
    body = {"prompt": "", "n": 0, "size": "huge", "stream": "no"}
    async with app_client() as client:
        response = await client.post("/v1/images/generations", json=body)
    assert response.status_code == 422
    locs = {tuple(d["loc"]) for d in response.json()["error"]["details"]}
    assert locs == {("body", "prompt"), ("body", "n"), ("body", "size"), ("body", "stream")}


@pytest.mark.anyio
async def test_missing_prompt_and_non_object_body() -> None:
    async with app_client() as client:
        missing = await client.post("/v1/images/generations", json={"model": MODEL})
        array = await client.post("/v1/images/generations", json=[{"prompt": "x"}])
    assert missing.status_code == 422
    assert missing.json()["error"]["details"][0]["type"] == "missing"
    assert missing.json()["error"]["details"][0]["loc"] == ["body", "prompt"]
    assert array.status_code == 422
    assert array.json()["error"]["details"][0]["loc"] == ["body"]


@pytest.mark.anyio
async def test_missing_model_without_default_is_422_and_default_model_is_used() -> None:
    async with app_client() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["loc"] == ["body", "model"]
    async with app_client(default_model="local/sketch") as client:
        ok = await client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"})
    assert ok.status_code == 200
    assert len(ok.json()["data"]) == 1


VALID: list[dict[str, Any]] = [
    {"n": 1},
    {"n": 10, "size": "64x64"},
    {"size": "auto"},
    {"size": "3:2"},
    {"size": "1024x1536"},
    {"size": "200x120"},
    {"quality": "low"},
    {"quality": "hd"},
    {"response_format": "b64_json"},
    {"response_format": "url"},
    {"output_format": "webp", "output_compression": 0},
    {"output_format": "jpeg", "output_compression": 100},
    {"background": "transparent", "output_format": "png"},
    {"background": "opaque"},
    {"moderation": "low"},
    {"seed": -1},
    {"seed": 2147483647},
    {"user": "user-1234"},
    {"stream": False},
]


@pytest.mark.anyio
@pytest.mark.parametrize("fields", VALID)
async def test_valid_values_are_served(fields: dict[str, Any]) -> None:
    body = {"model": MODEL, "prompt": "a red fox", "size": "64x64", **fields}
    async with app_client() as client:
        response = await client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == fields.get("n", 1)
