"""Edits end to end: a live gateway on 127.0.0.1 called with the real ``openai`` and ``meshapi``
SDKs, editing with ``local/*``, through the OpenAI emulator (which checks the multipart form it
receives, file by file) and through the Vertex emulator (which checks the ``inlineData`` parts)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from meshapi import ImageEditParams, MeshAPI, MeshAPIError
from openai import OpenAI
from PIL import Image

from mesh_images_asgi import ImagesApp, Settings
from tests.edit_images import data_url, half_mask, solid
from tests.emulators.openai import OpenAIEmulator
from tests.emulators.vertex import VertexEmulator
from tests.helpers import decode_image
from tests.support.live import serve

OPENAI_KEY = "sk-emulator-edits-0123456789"
VERTEX_KEY = "AQ.emulated-edits-key"
PHOTO = solid(96, 64)
OTHER = solid(96, 64, (20, 160, 40), fmt="WEBP")
MASK = half_mask(96, 64)


@dataclass
class Live:
    openai: OpenAIEmulator
    vertex: VertexEmulator
    gateway: str
    vertex_url: str

    def openai_sdk(self) -> OpenAI:
        return OpenAI(base_url=self.gateway + "/v1", api_key="x", max_retries=0)

    def mesh_sdk(self) -> MeshAPI:
        return MeshAPI(base_url=self.gateway, token="x", max_retries=0)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    openai_emulator = OpenAIEmulator(api_key=OPENAI_KEY)
    vertex_emulator = VertexEmulator(api_key=VERTEX_KEY)
    with openai_emulator.serve() as openai_url, serve(vertex_emulator.app) as vertex_url:
        settings = Settings(
            openai_api_key=OPENAI_KEY,
            openai_base_url=openai_url,
            vertex_api_key=VERTEX_KEY,
            vertex_base_url=vertex_url,
            local_latency=0.05,
            max_attempts=1,
        )
        with serve(ImagesApp(settings)) as gateway:
            yield Live(openai_emulator, vertex_emulator, gateway, vertex_url)


@pytest.fixture
def up(live: Live) -> Live:
    live.openai.reset()
    live.vertex.reset()
    return live


def b64_image(item: Any) -> Image.Image:
    return decode_image(base64.b64decode(item.b64_json or ""))


def final_stream_image(events: list[dict[str, Any]]) -> Image.Image:
    """The finished image of an edit's stream in OpenAI's dialect (the openai SDK's): typed
    ``image_edit.*`` events, the last one ``image_edit.completed``."""
    assert {event["type"] for event in events[:-1]} <= {"image_edit.partial_image"}
    assert events[-1]["type"] == "image_edit.completed"
    return decode_image(base64.b64decode(events[-1]["b64_json"]))


def assert_masked_edit(original: bytes, edited: Image.Image) -> None:
    """The opaque (left) half of the mask kept every pixel; the transparent half changed."""
    before = Image.open(io.BytesIO(original)).convert("RGB")
    after = edited.convert("RGB")
    assert after.size == before.size
    width, height = before.size
    left = [(x, y) for x in range(width // 2) for y in range(height)]
    right = [(x, y) for x in range(width // 2, width) for y in range(height)]
    assert all(after.getpixel(xy) == before.getpixel(xy) for xy in left)
    assert sum(after.getpixel(xy) != before.getpixel(xy) for xy in right) > 0.9 * len(right)


# local/* ------------------------------------------------------------------------------------


def test_openai_sdk_edits_one_image_locally(up: Live) -> None:
    response = up.openai_sdk().images.edit(
        model="local/sketch",
        image=("photo.png", PHOTO, "image/png"),
        prompt="add a moon",
        response_format="b64_json",
    )
    assert response.data is not None
    image = b64_image(response.data[0])
    assert (image.format, image.size) == ("PNG", (96, 64))
    assert response.size == "96x64"


def test_openai_sdk_edits_several_images_locally(up: Live) -> None:
    response = up.openai_sdk().images.edit(
        model="local/sketch",
        image=[("a.png", PHOTO, "image/png"), ("b.webp", OTHER, "image/webp")],
        prompt="the two together",
        size="256x256",
        output_format="jpeg",
        response_format="b64_json",
    )
    assert response.data is not None
    image = b64_image(response.data[0])
    assert (image.format, image.size) == ("JPEG", (256, 256))


def test_openai_sdk_masked_edit_keeps_the_opaque_half(up: Live) -> None:
    response = up.openai_sdk().images.edit(
        model="local/sketch",
        image=("photo.png", PHOTO, "image/png"),
        mask=("mask.png", MASK, "image/png"),
        prompt="a red balloon",
        response_format="b64_json",
    )
    assert response.data is not None
    assert_masked_edit(PHOTO, b64_image(response.data[0]))


def test_openai_sdk_streamed_edit(up: Live) -> None:
    stream = up.openai_sdk().images.edit(
        model="local/sketch",
        image=("photo.png", PHOTO, "image/png"),
        prompt="at night",
        stream=True,
        partial_images=1,
    )
    events = [event.model_dump() for event in stream]
    assert len(events) >= 2  # a partial image, then the finished one
    assert final_stream_image(events).size == (96, 64)


def test_meshapi_sdk_inpaints_locally_with_pixels_checked(up: Live) -> None:
    response = up.mesh_sdk().images.edit(
        ImageEditParams(
            model="local/sketch",
            image=data_url(PHOTO),
            mask=base64.b64encode(MASK).decode(),
            prompt="a red balloon",
            operation="inpaint",
            response_format="b64_json",
        )
    )
    assert_masked_edit(PHOTO, decode_image(response.data[0].image_bytes()))


def test_meshapi_sdk_upscales_and_refuses_a_remote_url(up: Live) -> None:
    client = up.mesh_sdk()
    response = client.images.edit(
        ImageEditParams(model="local/sketch", image=data_url(PHOTO), operation="upscale")
    )
    assert decode_image(response.data[0].image_bytes()).size == (192, 128)
    with pytest.raises(MeshAPIError) as raised:
        client.images.edit(
            ImageEditParams(model="local/sketch", image="https://example.com/a.png", prompt="x")
        )
    assert raised.value.status == 400
    assert raised.value.error_code == "invalid_request"


# OpenAI -------------------------------------------------------------------------------------


def test_openai_sdk_edit_reaches_openai_as_multipart_with_every_file(up: Live) -> None:
    response = up.openai_sdk().images.edit(
        model="openai/gpt-image-1.5",
        image=[("a.png", PHOTO, "image/png"), ("b.webp", OTHER, "image/webp")],
        mask=("mask.png", MASK, "image/png"),
        prompt="a red balloon",
        input_fidelity="high",
        quality="low",
        n=2,
    )
    assert response.data is not None
    assert len(response.data) == 2
    (received,) = up.openai.requests
    assert received.path == "/v1/images/edits"
    assert received.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert received.body == {
        "model": "gpt-image-1.5",
        "prompt": "a red balloon",
        "n": 2,
        "quality": "low",
        "input_fidelity": "high",
    }
    files = [(f.part, f.format, f.size, f.mode) for f in received.files]
    assert files == [
        ("image[]", "PNG", (96, 64), "RGB"),
        ("image[]", "WEBP", (96, 64), "RGB"),
        ("mask", "PNG", (96, 64), "RGBA"),
    ]
    assert received.files[0].data == PHOTO  # forwarded byte for byte
    assert received.files[2].data == MASK


def test_meshapi_json_edit_reaches_openai_as_multipart(up: Live) -> None:
    response = up.mesh_sdk().images.edit(
        ImageEditParams(model="openai/gpt-image-2", image=data_url(PHOTO), prompt="snow")
    )
    assert response.data
    (received,) = up.openai.requests
    assert [(f.part, f.data) for f in received.files] == [("image", PHOTO)]
    assert received.body == {"model": "gpt-image-2", "prompt": "snow", "n": 1}


def test_openai_native_edit_stream_is_read_from_image_edit_events(up: Live) -> None:
    stream = up.openai_sdk().images.edit(
        model="openai/gpt-image-1.5",
        image=("a.png", PHOTO, "image/png"),
        prompt="dusk",
        stream=True,
        partial_images=2,
    )
    events = [event.model_dump() for event in stream]
    (received,) = up.openai.requests
    assert received.body["stream"] is True
    assert received.body["partial_images"] == 2
    partials = [e for e in events if e.get("partial_image_index") is not None]
    assert len(partials) == 2  # the upstream's partial images, passed on
    assert final_stream_image(events).format == "PNG"


def test_an_openai_refusal_of_the_edit_is_our_invalid_request(up: Live) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        up.openai_sdk().images.edit(
            model="openai/gpt-image-1-mini",
            image=("a.png", PHOTO, "image/png"),
            prompt="x",
            input_fidelity="high",
        )
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "input_fidelity"  # refused by the catalog, not upstream
    assert up.openai.requests == []


# Vertex -------------------------------------------------------------------------------------


def test_meshapi_edit_reaches_gemini_as_inline_data_parts(up: Live) -> None:
    response = up.mesh_sdk().images.edit(
        ImageEditParams(
            model="vertex/gemini-3.1-flash-image",
            image=data_url(PHOTO),
            reference_images=[data_url(OTHER, "image/webp")],
            prompt="put them side by side",
            operation="mix",
            size="16:9",
        )
    )
    assert decode_image(response.data[0].image_bytes()).size == (128, 72)
    (call,) = up.vertex.calls
    assert call.method == "generateContent"
    assert call.prompt == "put them side by side"
    assert call.aspect_ratio == "16:9"  # from size, not collapsed to 1:1
    assert [(p.mime_type, p.format, p.size) for p in call.inputs] == [
        ("image/png", "PNG", (96, 64)),
        ("image/webp", "WEBP", (96, 64)),
    ]


def test_openai_sdk_edit_on_gemini_without_a_size_sends_no_aspect_ratio(up: Live) -> None:
    response = up.openai_sdk().images.edit(
        model="vertex/gemini-3.1-flash-image",
        image=("a.png", PHOTO, "image/png"),
        prompt="make it winter",
    )
    assert response.data is not None
    (call,) = up.vertex.calls
    assert "imageConfig" not in call.body["generationConfig"]
    assert [p.size for p in call.inputs] == [(96, 64)]


def test_gemini_takes_no_mask_and_imagen_edits_are_retired(up: Live) -> None:
    client = up.openai_sdk()
    with pytest.raises(openai.BadRequestError) as masked:
        client.images.edit(
            model="vertex/gemini-3-pro-image",
            image=("a.png", PHOTO, "image/png"),
            mask=("m.png", MASK, "image/png"),
            prompt="x",
        )
    assert isinstance(masked.value.body, dict)
    assert masked.value.body["param"] == "mask"
    with pytest.raises(openai.APIStatusError) as retired:
        client.images.edit(model="vertex/imagen-4", image=("a.png", PHOTO, "image/png"), prompt="x")
    assert retired.value.status_code == 410
    assert isinstance(retired.value.body, dict)
    assert retired.value.body["code"] == "model_retired"
    assert "gemini" in retired.value.body["message"]
    assert up.vertex.requests == []


def test_an_imagen_edit_is_a_gemini_edit_when_retired_models_are_replaced(up: Live) -> None:
    settings = Settings(
        vertex_api_key=VERTEX_KEY, vertex_base_url=up.vertex_url, retired_models="replace"
    )
    with serve(ImagesApp(settings)) as gateway:
        client = OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
        response = client.images.edit(
            model="vertex/imagen-4", image=("a.png", PHOTO, "image/png"), prompt="x"
        )
    assert response.data is not None
    (call,) = up.vertex.calls
    assert (call.model, call.method) == ("gemini-3.1-flash-image", "generateContent")
    assert [p.size for p in call.inputs] == [(96, 64)]


def test_the_vertex_credentials_a_client_brings_are_used_for_its_edit(up: Live) -> None:
    settings = Settings(
        vertex_api_key="AQ.not-the-emulators-key", vertex_base_url=up.vertex_url, max_attempts=1
    )
    with serve(ImagesApp(settings)) as gateway:
        client = OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
        response = client.images.edit(
            model="vertex/gemini-3.1-flash-image",
            image=("a.png", PHOTO, "image/png"),
            prompt="x",
            extra_headers={"X-Vertex-Credentials": VERTEX_KEY},
        )
    assert response.data is not None
    (request,) = up.vertex.requests
    assert request.headers["x-goog-api-key"] == VERTEX_KEY  # the client's, not the gateway's
    (call,) = up.vertex.calls
    assert [p.size for p in call.inputs] == [(96, 64)]


def test_the_mesh_model_list_says_which_models_edit(up: Live) -> None:
    models = {model.id: model for model in up.mesh_sdk().models.list()}
    local, gemini = models["local/sketch"], models["vertex/gemini-3.1-flash-image"]
    assert local.supports_image_edit
    assert local.supports_image_inpaint
    assert local.supports_image_upscale
    assert local.supports_image_reference
    assert gemini.supports_image_mix
    assert not gemini.supports_image_inpaint  # it takes no mask
    assert "image" in local.input_modalities
