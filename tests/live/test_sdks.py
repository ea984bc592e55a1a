"""A live server on 127.0.0.1, called with the official ``meshapi`` and ``openai`` SDKs."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from meshapi import AsyncMeshAPI, ImageGenerationParams, MeshAPI
from openai import AsyncOpenAI, OpenAI

from mesh_images_asgi import Settings
from mesh_images_asgi.main import create_app
from tests.helpers import decode_image
from tests.support.live import serve


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(create_app(Settings(local_latency=0.05))) as url:
        yield url


def test_meshapi_sync(base_url: str) -> None:
    client = MeshAPI(base_url=base_url, token="rsk_test", max_retries=0)
    response = client.images.generate(
        ImageGenerationParams(
            model="local/sketch",
            prompt="a lighthouse at dusk",
            n=2,
            size="320x240",
            output_format="jpeg",
        )
    )
    assert len(response.data) == 2
    for item in response.data:
        image = decode_image(item.image_bytes())
        assert (image.format, image.size) == ("JPEG", (320, 240))
    assert response.size == "320x240"
    assert response.output_format == "jpeg"


@pytest.mark.anyio
async def test_meshapi_async(base_url: str) -> None:
    async with AsyncMeshAPI(base_url=base_url, token="rsk_test", max_retries=0) as client:
        response = await client.images.generate(
            ImageGenerationParams(
                model="local/sketch",
                prompt="a lighthouse",
                size="16:9",
                output_format="webp",
                response_format="b64_json",
            )
        )
    image = decode_image(response.data[0].image_bytes())
    assert (image.format, image.size) == ("WEBP", (1344, 768))
    assert response.data[0].b64_json is not None


def test_meshapi_error_is_raised_with_the_contract_code(base_url: str) -> None:
    from meshapi import MeshAPIError

    client = MeshAPI(base_url=base_url, token="rsk_test", max_retries=0)
    with pytest.raises(MeshAPIError) as raised:
        client.images.generate(
            ImageGenerationParams(model="local/sketch", prompt="x", size="999x999")
        )
    assert raised.value.status == 400
    assert raised.value.error_code == "invalid_request"
    assert raised.value.request_id.startswith("req_")


def test_openai_sync(base_url: str) -> None:
    client = OpenAI(base_url=base_url + "/v1", api_key="sk-local", max_retries=0)
    response = client.images.generate(
        model="local/sketch",
        prompt="a red fox",
        size="1024x1536",
        response_format="b64_json",
        output_format="png",
    )
    assert response.data is not None
    image = decode_image(base64.b64decode(response.data[0].b64_json or ""))
    assert (image.format, image.size) == ("PNG", (1024, 1536))


@pytest.mark.anyio
async def test_openai_async_url_is_a_data_url(base_url: str) -> None:
    async with AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-local", max_retries=0) as client:
        response = await client.images.generate(
            model="local/sketch", prompt="a red fox", n=3, size="256x256"
        )
    assert response.data is not None
    assert len(response.data) == 3
    url = response.data[0].url or ""
    assert url.startswith("data:image/png;base64,")
    assert decode_image(base64.b64decode(url.split(",", 1)[1])).size == (256, 256)


def test_openai_sdk_sees_our_error_envelope(base_url: str) -> None:
    import openai

    client = OpenAI(base_url=base_url + "/v1", api_key="sk-local", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        client.images.generate(model="local/nope", prompt="x")
    assert raised.value.status_code == 404
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "model_not_found"
