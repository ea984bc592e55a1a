"""Every client works unchanged: the openai and meshapi SDKs, curl-like raw HTTP, over uvicorn.

Each test runs the real SDK against the gateway on 127.0.0.1 (and, for ``openai/*``, the gateway
against the OpenAI emulator): the openai SDK gets OpenAI's typed image stream events with no
configuration but ``base_url``; the meshapi SDK gets Mesh's chunks and model shapes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from meshapi import AsyncMeshAPI, ImageGenerationParams, MeshAPI
from openai import AsyncOpenAI, OpenAI

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._core.asgi import Receive, Scope, Send
from mesh_images_asgi.main import create_app
from tests.emulators.openai import OpenAIEmulator, StreamError
from tests.helpers import decode_image
from tests.support.live import serve

KEY = "sk-emulator-clients-0123456789"


class Counting:
    """An ASGI wrapper counting the HTTP requests that reach the gateway."""

    def __init__(self, app: ImagesApp) -> None:
        self.app = app
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests += 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[OpenAIEmulator, str]]:
    upstream = OpenAIEmulator(api_key=KEY)
    with upstream.serve() as url:
        yield upstream, url


@pytest.fixture(scope="module")
def counted(emulator: tuple[OpenAIEmulator, str]) -> Iterator[tuple[Counting, str]]:
    settings = Settings(
        openai_api_key=KEY,
        openai_base_url=emulator[1],
        local_latency=0.05,
        max_attempts=1,
        breaker_minimum_calls=1_000_000,
    )
    app = Counting(create_app(settings))
    with serve(app) as url:
        yield app, url


@pytest.fixture
def gateway(counted: tuple[Counting, str], emulator: tuple[OpenAIEmulator, str]) -> str:
    emulator[0].reset()
    return counted[1]


def _check_openai_events(events: list[Any], size: tuple[int, int] | None) -> None:
    types = [event.type for event in events]
    assert types == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    completed = events[-1]
    image = decode_image(base64.b64decode(completed.b64_json))
    assert image.format == "PNG"
    if size is not None:
        assert image.size == size
    assert completed.output_format == "png"
    assert completed.usage is not None
    assert completed.usage.total_tokens >= 0
    for partial in events[:2]:
        decode_image(base64.b64decode(partial.b64_json))


@pytest.mark.parametrize(
    ("model", "size"), [("local/sketch", (256, 256)), ("openai/gpt-image-2", None)]
)
def test_openai_sync_stream_yields_typed_events(gateway: str, model: str, size: Any) -> None:
    client = OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
    stream = client.images.generate(
        model=model,
        prompt="a fox in the snow",
        size="256x256" if size else "1024x1024",
        stream=True,
        partial_images=2,
    )
    _check_openai_events(list(stream), size)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("model", "size"), [("local/sketch", (512, 512)), ("openai/gpt-image-2", None)]
)
async def test_openai_async_stream_yields_typed_events(gateway: str, model: str, size: Any) -> None:
    async with AsyncOpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0) as client:
        stream = await client.images.generate(
            model=model,
            prompt="a fox in the snow",
            size="512x512" if size else "1024x1024",
            stream=True,
            partial_images=2,
        )
        events = [event async for event in stream]
    _check_openai_events(events, size)


def test_openai_stream_error_is_raised_with_our_code_and_type(
    gateway: str, emulator: tuple[OpenAIEmulator, str]
) -> None:
    emulator[0].fault = StreamError()
    client = OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
    stream = client.images.generate(
        model="openai/gpt-image-2", prompt="x", stream=True, partial_images=1
    )
    seen: list[str] = []

    def consume() -> None:
        seen.extend(event.type for event in stream)

    with pytest.raises(openai.APIError) as raised:
        consume()
    assert seen == ["image_generation.partial_image"]
    assert raised.value.code == "upstream_error"
    assert raised.value.type == "server_error"


def _raw_frames(gateway: str, headers: dict[str, str], body: dict[str, Any]) -> list[str]:
    with httpx.stream(
        "POST", gateway + "/v1/images/generations", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    return [frame for frame in text.split("\n\n") if frame]


def test_pings_flow_in_the_openai_dialect() -> None:
    settings = Settings(local_latency=1.0, keepalive_interval=0.05)
    with serve(create_app(settings)) as url:
        frames = _raw_frames(
            url,
            {"X-Stainless-Lang": "python"},
            {"model": "local/sketch", "prompt": "p", "size": "256x256", "stream": True},
        )
    assert frames[0] == ": ping"  # OpenAI has no processing event: the headers go with a ping
    pings = [frame for frame in frames if frame == ": ping"]
    assert len(pings) >= 3
    completed = frames[-2].split("\n")
    assert completed[0] == "event: image_generation.completed"
    payload = json.loads(completed[1].removeprefix("data: "))
    assert payload["type"] == "image_generation.completed"
    assert set(payload) >= {"b64_json", "created_at", "size", "quality", "background", "usage"}
    assert (payload["size"], payload["output_format"]) == ("256x256", "png")
    assert frames[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("headers", "first"),
    [
        ({}, "data: "),
        ({"X-Mesh-Dialect": "openai"}, ": ping"),
        ({"X-Stainless-Lang": "python", "X-Mesh-Dialect": "mesh"}, "data: "),
    ],
)
def test_the_dialect_header_chooses_explicitly(
    gateway: str, headers: dict[str, str], first: str
) -> None:
    body = {"model": "local/sketch", "prompt": "p", "size": "256x256", "stream": True}
    frames = _raw_frames(gateway, headers, body)
    assert frames[0].startswith(first)
    if first == "data: ":
        assert json.loads(frames[0][6:])["object"] == "image.chunk"
    else:
        assert frames[-2].startswith("event: image_generation.completed")


def test_meshapi_stream_still_gets_mesh_chunks(gateway: str) -> None:
    client = MeshAPI(base_url=gateway, token="rsk_test", max_retries=0)
    params = ImageGenerationParams(
        model="local/sketch", prompt="a kite", size="256x256", stream=True
    )
    chunks = list(client.images.stream(params))
    assert chunks[0].status == "processing"
    final = chunks[-1]
    assert final.status == "completed"
    assert final.object == "image.chunk"
    assert decode_image(final.data[0].image_bytes()).size == (256, 256)


def test_openai_models_retrieve_resolves_ids_and_aliases(gateway: str) -> None:
    client = OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
    model = client.models.retrieve("local/sketch")
    assert (model.id, model.object, model.owned_by) == ("local/sketch", "model", "local")
    assert client.models.retrieve("local/default").id == "local/sketch"
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("local/nope")
    assert raised.value.code == "model_not_found"
    assert raised.value.type == "invalid_request_error"


def test_meshapi_models_list_and_get(gateway: str) -> None:
    client = MeshAPI(base_url=gateway, token="rsk_test", max_retries=0)
    models = client.models.list()
    ids = [model.id for model in models]
    assert "local/sketch" in ids
    assert "openai/gpt-image-2" in ids
    sketch = next(model for model in models if model.id == "local/sketch")
    assert (sketch.model_type, sketch.is_free, sketch.provider) == ("image", True, "local")
    assert sketch.pricing is not None
    assert sketch.pricing.image_output_usd_per_image == "0"
    assert sketch.output_modalities == ["image"]
    assert [model.id for model in client.models.list(type="image")] == ids
    assert client.models.list(type="text") == []
    assert [model.id for model in client.models.list(provider="local")] == ["local/sketch"]
    got = client.models.get("local/default")
    assert (got.id, got.model_type) == ("local/sketch", "image")
    tabled = client.models.get("openai/gpt-image-1.5")  # priced by quality and size
    assert tabled.pricing is not None
    assert tabled.pricing.image_output_usd_per_image is None
    assert (tabled.pricing.notes or "").startswith("USD per image by quality and size: {")


@pytest.mark.anyio
async def test_meshapi_async_models_get(gateway: str) -> None:
    async with AsyncMeshAPI(base_url=gateway, token="rsk_test", max_retries=0) as client:
        model = await client.models.get("openai/gpt-image-2")
    assert model.id == "openai/gpt-image-2"
    assert model.is_free is False


def test_models_type_filter_is_case_insensitive(gateway: str) -> None:
    listed = httpx.get(gateway + "/v1/models", params={"type": "IMAGE"}).json()
    assert listed["object"] == "list"
    assert "local/sketch" in [model["id"] for model in listed["data"]]
    assert httpx.get(gateway + "/v1/models", params={"type": "Text"}).json()["data"] == []


def test_an_openai_call_answered_501_reaches_the_gateway_once() -> None:
    app = Counting(create_app(Settings(local_latency=0)))  # no OpenAI key: openai/* is 501
    with serve(app) as url:
        client = OpenAI(base_url=url + "/v1", api_key="x")  # the SDK's default retries
        with pytest.raises(openai.APIStatusError) as raised:
            client.images.generate(model="openai/gpt-image-2", prompt="x")
    assert raised.value.status_code == 501
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert raised.value.code == "not_implemented"
    assert raised.value.type == "server_error"
    assert app.requests == 1


def test_safety_identifier_and_user_are_forwarded_to_openai(
    gateway: str, emulator: tuple[OpenAIEmulator, str]
) -> None:
    client = OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
    client.images.generate(
        model="openai/gpt-image-2", prompt="x", user="u-1", safety_identifier="hash-1"
    )
    body = emulator[0].requests[-1].body
    assert (body["user"], body["safety_identifier"]) == ("u-1", "hash-1")


def test_safety_identifier_is_accepted_by_every_model(gateway: str) -> None:
    client = OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
    response = client.images.generate(
        model="local/sketch",
        prompt="x",
        size="256x256",
        response_format="b64_json",
        safety_identifier="hash-1",
    )
    assert response.data is not None
    assert decode_image(base64.b64decode(response.data[0].b64_json or "")).size == (256, 256)
    # Vertex takes neither; the request gets past validation (501: Vertex is not configured).
    answer = httpx.post(
        gateway + "/v1/images/generations",
        json={
            "model": "vertex/gemini-3.1-flash-image",
            "prompt": "x",
            "user": "u",
            "safety_identifier": "h",
        },
    )
    assert answer.status_code == 501
    assert answer.json()["error"]["code"] == "not_implemented"
