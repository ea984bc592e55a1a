"""``POST /v1/images/edits`` in process: both request forms, every refusal with its ``param``,
the catalog's edit capabilities, and an edit on the generation path (keys, metrics, cost)."""

from __future__ import annotations

import base64
import io
import random
from typing import Any

import httpx
import pytest
from PIL import Image

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._access.keys import hash_key, new_key
from tests.edit_images import data_url, encoded, half_mask, solid
from tests.helpers import app_client, client_for, decode_item
from tests.support.leaks import WATCH

EDITS = "/v1/images/edits"
PNG = solid(64, 48)
JPEG = solid(200, 200, fmt="JPEG")
WEBP = solid(200, 200, fmt="WEBP")


def form(*images: bytes, mask: bytes | None = None, **fields: str) -> dict[str, Any]:
    files = [
        ("image[]" if len(images) > 1 else "image", (f"i{n}.png", data, "image/png"))
        for n, data in enumerate(images)
    ]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return {"data": {"model": "local/sketch", "prompt": "a cat", **fields}, "files": files}


def assert_refused(response: httpx.Response, status: int, code: str, param: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error.get("param") == param
    message: str = error["message"]
    return message


@pytest.mark.anyio
async def test_a_multipart_edit_keeps_the_input_size_and_answers_like_a_generation() -> None:
    async with app_client() as client:
        response = await client.post(EDITS, **form(PNG, response_format="b64_json", n="2"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 2
    assert body["size"] == "64x48"
    assert [decode_item(item).size for item in body["data"]] == [(64, 48), (64, 48)]
    assert response.headers["x-mesh-routing-model"] == "local/sketch"


@pytest.mark.anyio
async def test_a_mask_edits_only_where_it_is_transparent() -> None:
    async with app_client() as client:
        response = await client.post(
            EDITS, **form(PNG, mask=half_mask(64, 48), response_format="b64_json")
        )
    assert response.status_code == 200, response.text
    edited = decode_item(response.json()["data"][0]).convert("RGB")
    original = Image.open(io.BytesIO(PNG)).convert("RGB")
    left = [(x, y) for x in range(32) for y in range(48)]
    right = [(x, y) for x in range(32, 64) for y in range(48)]
    assert all(edited.getpixel(xy) == original.getpixel(xy) for xy in left)
    changed = sum(edited.getpixel(xy) != original.getpixel(xy) for xy in right)
    assert changed > len(right) * 0.9


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("operation", "extra", "size"),
    [
        ("upscale", {}, (128, 96)),
        ("upscale", {"upscale_factor": "3x"}, (192, 144)),
        ("outpaint", {"prompt": "a field"}, (96, 72)),
        ("reframe", {"expand_factor": 2}, (128, 96)),
        ("remove_background", {}, (64, 48)),
        ("edit", {"size": "256x256", "prompt": "a cat"}, (256, 256)),
    ],
)
async def test_mesh_json_operations_and_their_output_size(
    operation: str, extra: dict[str, Any], size: tuple[int, int]
) -> None:
    body = {"model": "local/sketch", "image": data_url(PNG), "operation": operation, **extra}
    async with app_client() as client:
        response = await client.post(EDITS, json=body)
    assert response.status_code == 200, response.text
    assert decode_item(response.json()["data"][0]).size == size


@pytest.mark.anyio
async def test_remove_background_makes_the_background_transparent() -> None:
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    image.paste((10, 10, 200), (10, 10, 30, 30))
    body = {
        "model": "local/sketch",
        "image": data_url(encoded(image)),
        "operation": "remove_background",
    }
    async with app_client() as client:
        response = await client.post(EDITS, json={**body, "response_format": "b64_json"})
    result = decode_item(response.json()["data"][0]).convert("RGBA")
    assert result.getpixel((2, 2)) == (255, 255, 255, 0)
    assert result.getpixel((20, 20)) == (10, 10, 200, 255)


@pytest.mark.anyio
async def test_mix_blends_every_image_and_the_openai_json_form_is_taken() -> None:
    red, blue = solid(32, 32, (255, 0, 0)), solid(32, 32, (0, 0, 255))
    mesh = {
        "model": "local/sketch",
        "prompt": "mix",
        "operation": "mix",
        "image": data_url(red),
        "reference_images": [base64.b64encode(blue).decode()],
    }
    openai = {
        "model": "local/sketch",
        "prompt": "mix",
        "operation": "mix",
        "images": [{"image_url": data_url(red)}, {"image_url": data_url(blue)}],
    }
    async with app_client() as client:
        results = [await client.post(EDITS, json=body) for body in (mesh, openai)]
    for response in results:
        assert response.status_code == 200, response.text
        pixel = decode_item(response.json()["data"][0]).convert("RGB").getpixel((31, 31))
        assert isinstance(pixel, tuple)
        red_part, blue_part = pixel[0], pixel[2]  # both images are in it
        assert red_part > 60
        assert blue_part > 60


REFUSALS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("text named .png", form(b"hello, not an image"), 400, "invalid_request", "image"),
    ("truncated png", form(PNG[: len(PNG) // 2]), 400, "invalid_request", "image"),
    ("truncated jpeg", form(JPEG[: len(JPEG) // 2]), 400, "invalid_request", "image"),
    ("truncated webp", form(WEBP[: len(WEBP) // 2]), 400, "invalid_request", "image"),
    ("gif", form(encoded(Image.new("RGB", (8, 8)), "GIF")), 400, "invalid_request", "image"),
    ("17 images", form(*[PNG] * 17), 400, "invalid_request", "image"),
    ("mask of another size", form(PNG, mask=half_mask(32, 32)), 400, "invalid_request", "mask"),
    ("mask without alpha", form(PNG, mask=solid(64, 48)), 400, "invalid_request", "mask"),
    ("unknown operation", form(PNG, operation="paint"), 400, "invalid_request", "operation"),
    (
        "bad input_fidelity",
        form(PNG, input_fidelity="max"),
        400,
        "invalid_request",
        "input_fidelity",
    ),
    ("n not a number", form(PNG, n="two"), 422, "validation_error", None),
    ("size the model lacks", form(PNG, size="7x7"), 400, "invalid_request", "size"),
    ("retired imagen edits", form(PNG, model="vertex/imagen-4"), 410, "model_retired", "model"),
    ("a model without edits", form(PNG, model="local/plain"), 400, "invalid_request", "model"),
    (
        "no image",
        {"json": {"model": "local/sketch", "prompt": "x"}},
        400,
        "invalid_request",
        "image",
    ),
    (
        "remote url",
        {"json": {"model": "local/sketch", "prompt": "x", "image": "https://e.com/a.png"}},
        400,
        "invalid_request",
        "image",
    ),
    (
        "file_id",
        {"json": {"model": "local/sketch", "prompt": "x", "images": [{"file_id": "f"}]}},
        400,
        "invalid_request",
        "images",
    ),
    (
        "image and images",
        {
            "json": {
                "model": "local/sketch",
                "prompt": "x",
                "image": data_url(PNG),
                "images": [{"image_url": data_url(PNG)}],
            }
        },
        400,
        "invalid_request",
        "images",
    ),
    (
        "not base64",
        {"json": {"model": "local/sketch", "prompt": "x", "image": "%%%"}},
        400,
        "invalid_request",
        "image",
    ),
    ("json not an object", {"json": [1]}, 422, "validation_error", None),
    (
        "edit without a prompt",
        {"json": {"model": "local/sketch", "image": data_url(PNG)}},
        422,
        "validation_error",
        None,
    ),
    (
        "text/plain",
        {"content": b"x", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
        None,
    ),
    (
        "truncated form",
        {
            "content": b'--xyz\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhal',
            "headers": {"content-type": "multipart/form-data; boundary=xyz"},
        },
        400,
        "invalid_request",
        None,
    ),
    (
        "no boundary",
        {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
        400,
        "invalid_request",
        None,
    ),
    (
        "a file where text belongs",
        {
            "data": {"model": "local/sketch"},
            "files": [("image", ("a.png", PNG)), ("prompt", ("p.txt", b"x"))],
        },
        422,
        "validation_error",
        None,
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("request_args", "status", "code", "param"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
async def test_refusals_name_the_field(
    request_args: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    plain = {"provider": "local", "upstream": "sketch", "sizes": ["auto"]}
    async with app_client(models={"local/plain": plain}) as client:
        response = await client.post(EDITS, **request_args)
    message = assert_refused(response, status, code, param)
    assert "Traceback" not in message


@pytest.mark.anyio
async def test_a_model_that_cannot_take_what_is_asked_says_what_it_takes() -> None:
    limited = {"edits": {"operations": ["edit"], "max_images": 2}}
    async with app_client(models={"local/sketch": limited}) as client:
        many = await client.post(EDITS, **form(PNG, PNG, PNG))
        masked = await client.post(EDITS, **form(PNG, mask=half_mask(64, 48)))
        upscale = await client.post(EDITS, **form(PNG, operation="upscale"))
    assert "at most 2" in assert_refused(many, 400, "invalid_request", "image")
    assert_refused(masked, 400, "invalid_request", "mask")
    assert "it accepts: edit" in assert_refused(upscale, 400, "invalid_request", "operation")


@pytest.mark.anyio
async def test_limits_are_413_while_reading() -> None:
    noise = encoded(Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3)))
    assert len(noise) > 1000
    async with app_client(max_edit_file_bytes=1000, max_edit_files=2) as client:
        big = await client.post(EDITS, **form(noise))
        many = await client.post(EDITS, **form(PNG, PNG, mask=half_mask(64, 48)))
    assert_refused(big, 413, "request_too_large", "image")
    assert_refused(many, 413, "request_too_large", "mask")
    async with app_client(max_edit_body_bytes=2000) as client:
        body = await client.post(EDITS, **form(noise, noise))
    assert_refused(body, 413, "request_too_large", None)


@pytest.mark.anyio
async def test_models_show_their_edit_capabilities() -> None:
    async with app_client() as client:
        models = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
    edits = models["local/sketch"]["capabilities"]["edits"]
    assert edits["max_images"] == 16
    assert edits["mask"] is True
    assert "upscale" in edits["operations"]
    assert models["local/sketch"]["capabilities"]["variations"] is False


@pytest.mark.anyio
async def test_variations_name_the_edits_route_unless_a_model_declares_them() -> None:
    async with app_client() as client:
        refused = await client.post(
            "/v1/images/variations", files=[("image", ("a.png", PNG, "image/png"))]
        )
    assert "/v1/images/edits" in assert_refused(refused, 400, "invalid_request", "model")
    async with app_client(models={"local/sketch": {"variations": True}}) as client:
        served = await client.post(
            "/v1/images/variations",
            data={"model": "local/sketch", "response_format": "b64_json"},
            files=[("image", ("a.png", PNG, "image/png"))],
        )
    assert served.status_code == 200, served.text
    assert decode_item(served.json()["data"][0]).size == (64, 48)


@pytest.mark.anyio
async def test_an_edit_is_a_job_of_kind_edit_on_the_generation_path() -> None:
    seen: list[tuple[str, int]] = []

    class Recording:
        name = "local"

        async def generate(self, job: Any, on_partial: Any = None) -> Any:
            from mesh_images_asgi._domain.jobs import GeneratedImage, ProviderResult

            seen.append((job.kind, len(job.inputs.images)))
            return ProviderResult([GeneratedImage(b64_json=base64.b64encode(PNG).decode())], 1)

        async def aclose(self) -> None:
            return None

    key = WATCH.secret(new_key())
    keys = [{"hash": hash_key(key), "label": "team-a", "models": ["local/*"]}]
    settings = Settings(api_keys=keys)
    app = ImagesApp(settings, providers={"local": Recording()}, metrics_route=True)
    async with client_for(app) as client:
        anonymous = await client.post(EDITS, **form(PNG))
        anonymous_variation = await client.post("/v1/images/variations", **form(PNG))
        headers = {"authorization": f"Bearer {key}"}
        served = await client.post(EDITS, headers=headers, **form(PNG, PNG))
        metrics = (await client.get("/metrics", headers=headers)).text
    assert anonymous.status_code == 401
    assert anonymous_variation.status_code == 401  # the key first, then what the route says
    assert served.status_code == 200, served.text
    assert seen == [("edit", 2)]
    assert 'route="/v1/images/edits"' in metrics


@pytest.mark.anyio
async def test_an_edit_is_retried_then_falls_back_like_a_generation() -> None:
    from mesh_images_asgi._core.errors import UpstreamError
    from mesh_images_asgi.providers.local import LocalProvider

    attempts: list[tuple[str, str]] = []

    class Failing:
        name = "openai"

        async def generate(self, job: Any, on_partial: Any = None) -> Any:
            attempts.append((job.entry.id, job.kind))
            raise UpstreamError("OpenAI answered 500.", provider_code="internal_provider_error")

        async def aclose(self) -> None:
            return None

    settings = Settings(retry_backoff=0, retries_per_model=1, local_latency=0)
    app = ImagesApp(settings, providers={"openai": Failing(), "local": LocalProvider(0)})
    body = {
        "model": "openai/gpt-image-2",
        "models": ["local/sketch"],
        "image": data_url(PNG),
        "prompt": "a cat",
        "response_format": "b64_json",
    }
    async with client_for(app) as client:
        response = await client.post(EDITS, json=body)
    assert response.status_code == 200, response.text
    assert attempts == [("openai/gpt-image-2", "edit")] * 2  # the first try and one retry
    assert response.headers["x-mesh-routing-model"] == "local/sketch"
    assert response.headers["x-mesh-routing-fallback"] == "true"
    assert decode_item(response.json()["data"][0]).size == (64, 48)  # the fallback edited it


@pytest.mark.anyio
async def test_imagen_edits_stay_retired_when_retired_models_are_served() -> None:
    async with app_client(retired_models="serve") as client:
        response = await client.post(EDITS, **form(PNG, model="vertex/imagen-4"))
    message = assert_refused(response, 410, "model_retired", "model")
    assert "Image editing" in message
    assert "vertex/gemini-3.1-flash-image" in message
