"""``openai/*`` end to end: the official SDKs -> our gateway (uvicorn) -> the OpenAI emulator.

Every hop is real HTTP on 127.0.0.1. The emulator checks what the real API checks and records
what it received, so the upstream body is asserted field by field; faults injected into it are
asserted as our status, ``error.code``, ``provider_code`` and ``Retry-After``.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from meshapi import ImageGenerationParams, MeshAPI, MeshAPIError
from openai import OpenAI

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._core.errors import GatewayError, GatewayTimeout, UpstreamError
from mesh_images_asgi._domain.jobs import PartialImage
from mesh_images_asgi._upstream.aiohttp import AiohttpUpstream
from mesh_images_asgi._upstream.client import HttpxUpstream, UpstreamClient
from mesh_images_asgi.providers.openai import OpenAIProvider
from tests.emulators.openai import (
    ErrorReply,
    Fault,
    OpenAIEmulator,
    StreamError,
    content_policy_violation,
    emulator_fixtures,
    invalid_api_key,
    moderation_blocked,
    overloaded,
    rate_limited,
    region_not_supported,
    server_error,
)
from tests.helpers import decode_image, decode_item
from tests.providers.test_openai import make_job
from tests.support.live import serve

KEY = "sk-emulator-live-0123456789"
GEN = "/v1/images/generations"


served, emulator = emulator_fixtures(KEY)


def gateway_app(upstream: str, **settings: Any) -> ImagesApp:
    # Error mapping here, one upstream call per request; retries and circuits: tests/faults.
    settings.setdefault("max_attempts", 1)
    settings.setdefault("breaker_minimum_calls", 1_000_000)
    return ImagesApp(
        Settings(openai_api_key=KEY, openai_base_url=upstream, local_latency=0, **settings)
    )


@pytest.fixture(scope="module")
def gateway(served: tuple[OpenAIEmulator, str]) -> Iterator[str]:
    with serve(gateway_app(served[1])) as url:
        yield url


def openai_client(gateway: str) -> OpenAI:
    return OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)


def mesh_client(gateway: str) -> MeshAPI:
    return MeshAPI(base_url=gateway, token="x", max_retries=0)


def test_openai_sdk_generates_through_the_gateway(emulator: OpenAIEmulator, gateway: str) -> None:
    raw = openai_client(gateway).images.with_raw_response.generate(
        model="openai/gpt-image-2",
        prompt="a red fox",
        size="1536x1024",
        quality="low",
        response_format="b64_json",
    )
    response = raw.parse()
    assert response.data is not None
    image = decode_image(base64.b64decode(response.data[0].b64_json or ""))
    assert (image.format, image.size) == ("PNG", (24, 16))  # the emulator draws at 1/64
    body = raw.http_response.json()
    assert {key: body[key] for key in ("background", "output_format", "quality", "size")} == {
        "background": "opaque",
        "output_format": "png",
        "quality": "low",
        "size": "1536x1024",
    }
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 408,
        "total_tokens": 411,
        "input_tokens_details": {"text_tokens": 3, "image_tokens": 0},
        "output_tokens_details": {"image_tokens": 408, "text_tokens": 0},
    }
    assert emulator.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert "openai-organization" not in emulator.requests[0].headers


def test_meshapi_sdk_generates_through_the_gateway(emulator: OpenAIEmulator, gateway: str) -> None:
    response = mesh_client(gateway).images.generate(
        ImageGenerationParams(
            model="openai/gpt-image-1.5",
            prompt="two foxes",
            n=2,
            output_format="jpeg",
            output_compression=70,
        )
    )
    assert len(response.data) == 2
    for item in response.data:
        assert (item.url or "").startswith("data:image/jpeg;base64,")
        assert decode_image(item.image_bytes()).format == "JPEG"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (2, 2112)
    assert response.usage.input_tokens_details == {"text_tokens": 2, "image_tokens": 0}


UPSTREAM_BODIES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "openai",
        {"model": "openai/gpt-image-1.5", "prompt": "a fox"},
        {"model": "gpt-image-1.5", "prompt": "a fox", "n": 1},
    ),
    (
        "openai",
        {
            "model": "openai/gpt-image-2",
            "prompt": "a fox",
            "n": 2,
            "size": "16:9",
            "quality": "high",
            "output_format": "webp",
            "output_compression": 80,
            "background": "opaque",
            "moderation": "low",
            "user": "user-1",
        },
        {
            "model": "gpt-image-2",
            "prompt": "a fox",
            "n": 2,
            "size": "1344x768",
            "quality": "high",
            "output_format": "webp",
            "output_compression": 80,
            "background": "opaque",
            "moderation": "low",
            "user": "user-1",
        },
    ),
    (  # response_format is ours, not gpt-image's; unknown fields travel untouched
        "openai",
        {
            "model": "openai/gpt-image-2",
            "prompt": "a fox",
            "size": "auto",
            "response_format": "b64_json",
            "extra_body": {"safety_identifier": "hash-1", "complexity": "low"},
        },
        {
            "model": "gpt-image-2",
            "prompt": "a fox",
            "n": 1,
            "size": "auto",
            "safety_identifier": "hash-1",
            "complexity": "low",
        },
    ),
    (
        "meshapi",
        {
            "model": "openai/gpt-image-2.5-flare",
            "prompt": "a fox",
            "size": "2048x1152",
            "quality": "xhigh",
            "background": "transparent",
            "output_format": "png",
        },
        {
            "model": "gpt-image-2.5-flare",
            "prompt": "a fox",
            "n": 1,
            "size": "2048x1152",
            "quality": "xhigh",
            "background": "transparent",
            "output_format": "png",
        },
    ),
    (
        "meshapi",
        {
            "model": "openai/chatgpt-image-latest",
            "prompt": "a fox",
            "size": "2:3",
            "response_format": "url",
            "moderation": "auto",
        },
        {
            "model": "chatgpt-image-latest",
            "prompt": "a fox",
            "n": 1,
            "size": "1024x1536",
            "moderation": "auto",
        },
    ),
]


@pytest.mark.parametrize(("sdk", "request_body", "upstream_body"), UPSTREAM_BODIES)
def test_the_upstream_body_field_by_field(
    emulator: OpenAIEmulator,
    gateway: str,
    sdk: str,
    request_body: dict[str, Any],
    upstream_body: dict[str, Any],
) -> None:
    if sdk == "openai":
        openai_client(gateway).images.generate(**request_body)
    else:
        mesh_client(gateway).images.generate(ImageGenerationParams(**request_body))
    [received] = emulator.requests
    assert received.body == upstream_body


def test_a_field_the_upstream_refuses_is_our_invalid_request(
    emulator: OpenAIEmulator, gateway: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(gateway).images.generate(
            model="openai/gpt-image-2", prompt="a fox", extra_body={"foo": 1}
        )
    error = raised.value.response.json()["error"]
    assert (error["code"], error["param"], error["provider_code"]) == (
        "invalid_request",
        "foo",
        "unknown_parameter",
    )
    assert emulator.requests[0].body["foo"] == 1


GATEWAY_ERRORS: list[tuple[ErrorReply | Fault, int, str, str, str | None, int | None]] = [
    (moderation_blocked(), 400, "content_policy_violation", "moderation_blocked", None, None),
    (
        content_policy_violation(),
        400,
        "content_policy_violation",
        "content_policy_violation",
        None,
        None,
    ),
    (invalid_api_key(), 502, "upstream_auth_error", "invalid_api_key", None, None),
    (
        region_not_supported(),
        502,
        "upstream_auth_error",
        "unsupported_country_region_territory",
        None,
        None,
    ),
    (
        rate_limited(retry_after="7"),
        429,
        "upstream_rate_limit_error",
        "rate_limit_exceeded",
        "7",
        7,
    ),
    (
        rate_limited(retry_after_ms="3500", retry_after="30"),
        429,
        "upstream_rate_limit_error",
        "rate_limit_exceeded",
        "4",
        4,
    ),
    (rate_limited(), 429, "upstream_rate_limit_error", "rate_limit_exceeded", "1", 1),
    (server_error(), 502, "upstream_error", "internal_provider_error", None, None),
    (overloaded(), 502, "upstream_error", "provider_overloaded", None, None),
    (Fault.DROP, 502, "upstream_error", "connection_error", None, None),
    (Fault.MALFORMED, 502, "upstream_error", "bad_response", None, None),
    (Fault.TRUNCATED, 502, "upstream_error", "bad_response", None, None),
]


@pytest.mark.parametrize(
    ("fault", "status", "code", "provider_code", "retry_after", "retry_after_seconds"),
    GATEWAY_ERRORS,
    ids=[f"{row[1]}-{row[3]}-{index}" for index, row in enumerate(GATEWAY_ERRORS)],
)
def test_upstream_failures_map_to_our_errors(
    emulator: OpenAIEmulator,
    gateway: str,
    fault: ErrorReply | Fault,
    status: int,
    code: str,
    provider_code: str,
    retry_after: str | None,
    retry_after_seconds: float | None,
) -> None:
    emulator.fault = fault
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client(gateway).images.generate(model="openai/gpt-image-2", prompt="a fox")
    response = raised.value.response
    error = response.json()["error"]
    assert response.status_code == status
    assert (error["code"], error["provider_code"]) == (code, provider_code)
    assert response.headers.get("retry-after") == retry_after
    assert error.get("retry_after_seconds") == retry_after_seconds
    assert "sk-" not in response.text
    assert len(emulator.requests) == 1  # no retry behind the client's back


def test_meshapi_sdk_sees_the_refusal_and_the_rate_limit(
    emulator: OpenAIEmulator, gateway: str
) -> None:
    client = mesh_client(gateway)
    params = ImageGenerationParams(model="openai/gpt-image-2", prompt="a fox")
    emulator.fault = moderation_blocked("output")
    with pytest.raises(MeshAPIError) as refused:
        client.images.generate(params)
    assert (refused.value.status, refused.value.error_code) == (400, "content_policy_violation")
    assert refused.value.provider_error is not None
    assert refused.value.provider_error["code"] == "moderation_blocked"
    assert refused.value.provider_error["moderation_details"]["moderation_stage"] == "output"
    emulator.fault = rate_limited(retry_after="7")
    with pytest.raises(MeshAPIError) as limited:
        client.images.generate(params)
    assert (limited.value.status, limited.value.error_code) == (429, "upstream_rate_limit_error")
    assert limited.value.retry_after_seconds == 7


def test_the_deadline_is_504_and_cancels_the_upstream(
    emulator: OpenAIEmulator, served: tuple[OpenAIEmulator, str]
) -> None:
    emulator.latency = 5
    with serve(gateway_app(served[1], upstream_timeout=0.4)) as gateway:
        response = httpx.post(gateway + GEN, json={"model": "openai/gpt-image-2", "prompt": "a"})
    assert response.status_code == 504
    error = response.json()["error"]
    assert (error["code"], error["provider_code"]) == ("gateway_timeout", "provider_timeout")
    assert emulator.wait_cancelled(3)


def test_a_model_deadline_longer_than_the_default_is_kept(
    emulator: OpenAIEmulator, served: tuple[OpenAIEmulator, str]
) -> None:
    # The upstream client has no read timeout of its own: the model's deadline is the bound.
    emulator.latency = 0.8
    longer = {"openai/gpt-image-2": {"upstream_timeout": 5}}
    with serve(gateway_app(served[1], upstream_timeout=0.3, models=longer)) as gateway:
        response = httpx.post(gateway + GEN, json={"model": "openai/gpt-image-2", "prompt": "a"})
    assert response.status_code == 200, response.text


def sse_data(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE response, ``[DONE]`` kept as the string."""
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ")
    ]


def test_partial_images_stream_through_the_gateway(emulator: OpenAIEmulator, gateway: str) -> None:
    emulator.latency = 0.3
    body = {
        "model": "openai/gpt-image-2",
        "prompt": "a fox",
        "stream": True,
        "partial_images": 2,
        "response_format": "b64_json",
        "output_format": "webp",
    }
    with httpx.stream("POST", gateway + GEN, json=body) as response:
        chunks = sse_data(response)
    assert chunks[-1] == "[DONE]"
    assert [chunk["status"] for chunk in chunks[:-1]] == [
        "processing",
        "partial",
        "partial",
        "completed",
    ]
    assert [chunk.get("partial_image_index") for chunk in chunks[1:3]] == [0, 1]
    for chunk in chunks[1:4]:
        assert decode_item(chunk["data"][0]).format == "WEBP"
    final = chunks[3]
    assert final["usage"]["prompt_tokens"] == 2
    assert final["size"] == "1024x1024"
    assert emulator.requests[0].body == {
        "model": "gpt-image-2",
        "prompt": "a fox",
        "n": 1,
        "output_format": "webp",
        "stream": True,
        "partial_images": 2,
    }


def test_a_stream_without_partials_calls_the_json_endpoint(
    emulator: OpenAIEmulator, gateway: str
) -> None:
    chunks = list(
        mesh_client(gateway).images.stream(
            ImageGenerationParams(model="openai/gpt-image-2", prompt="a fox")
        )
    )
    assert [chunk.status for chunk in chunks] == ["processing", "completed"]
    assert decode_image(chunks[-1].data[0].image_bytes()).format == "PNG"
    assert emulator.requests[0].body == {"model": "gpt-image-2", "prompt": "a fox", "n": 1}


@pytest.mark.parametrize("partials", [1, 2])
def test_an_upstream_error_event_ends_our_stream(
    emulator: OpenAIEmulator, gateway: str, partials: int
) -> None:
    emulator.fault = StreamError()
    body = {
        "model": "openai/gpt-image-2",
        "prompt": "a fox",
        "stream": True,
        "partial_images": partials,
    }
    with httpx.stream("POST", gateway + GEN, json=body) as response:
        chunks = sse_data(response)
    statuses = [chunk.get("status") for chunk in chunks[: partials + 1]]
    assert statuses == ["processing", *["partial"] * partials]
    error = chunks[partials + 1]["error"]
    assert (error["code"], error["provider_code"]) == ("upstream_error", "internal_provider_error")
    assert error["provider_error"]["type"] == "server_error"
    assert chunks[partials + 2 :] == ["[DONE]"]


def test_a_client_leaving_a_json_request_cancels_the_upstream(
    emulator: OpenAIEmulator, gateway: str
) -> None:
    emulator.latency = 5
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway + GEN, json={"model": "openai/gpt-image-2", "prompt": "a"}, timeout=0.5)
    assert emulator.wait_received(0)
    assert emulator.wait_cancelled(3)
    assert emulator.requests[0].cancelled


def test_a_client_leaving_a_stream_cancels_the_upstream_stream(
    emulator: OpenAIEmulator, gateway: str
) -> None:
    emulator.latency = 5
    body = {"model": "openai/gpt-image-2", "prompt": "a", "stream": True, "partial_images": 2}
    with httpx.stream("POST", gateway + GEN, json=body) as response:
        lines = response.iter_lines()  # kept: a collected iterator closes the connection
        assert '"status":"processing"' in next(lines)
        assert emulator.wait_received()  # leave once the upstream call is under way
        assert not emulator.wait_cancelled(0.2)
    assert emulator.wait_cancelled(3)
    assert emulator.requests[0].body["stream"] is True


@pytest.fixture(params=["aiohttp", "httpx"])
async def upstream_client(request: pytest.FixtureRequest) -> AsyncIterator[UpstreamClient]:
    """The gateway's default client (aiohttp), and a user's plain httpx client."""
    if request.param == "aiohttp":
        client = AiohttpUpstream(
            connect_timeout=0.5, read_timeout=0.5, max_connections=8, max_answer_bytes=2**26
        )
        try:
            yield client
        finally:
            await client.aclose()
    else:
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as user_client:
            yield HttpxUpstream(user_client)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "latency", "base_url", "kind", "provider_code"),
    [
        (Fault.DROP, 0, None, UpstreamError, "connection_error"),
        (Fault.TRUNCATED, 0, None, UpstreamError, "bad_response"),
        (Fault.MALFORMED, 0, None, UpstreamError, "bad_response"),
        (None, 3, None, GatewayTimeout, "provider_timeout"),
        (None, 0, "closed", UpstreamError, "connection_error"),
    ],
)
async def test_failures_map_alike_on_both_transports(
    emulator: OpenAIEmulator,
    served: tuple[OpenAIEmulator, str],
    upstream_client: httpx.AsyncClient,
    fault: Fault | None,
    latency: float,
    base_url: str | None,
    kind: type[GatewayError],
    provider_code: str,
) -> None:
    emulator.fault, emulator.latency = fault, latency
    url = served[1] if base_url is None else f"http://127.0.0.1:{closed_port()}/v1"
    provider = OpenAIProvider(upstream_client, api_key=KEY, base_url=url)
    with pytest.raises(kind) as raised:
        await provider.generate(make_job({"model": "openai/gpt-image-2", "prompt": "a"}, provider))
    assert raised.value.provider_code == provider_code


@pytest.mark.anyio
async def test_native_streaming_on_both_transports(
    emulator: OpenAIEmulator, served: tuple[OpenAIEmulator, str], upstream_client: httpx.AsyncClient
) -> None:
    partials: list[PartialImage] = []

    async def on_partial(partial: PartialImage) -> None:
        partials.append(partial)

    provider = OpenAIProvider(upstream_client, api_key=KEY, base_url=served[1])
    body = {
        "model": "openai/gpt-image-2",
        "prompt": "a fox",
        "n": 2,
        "stream": True,
        "partial_images": 1,
    }
    result = await provider.generate(make_job(body, provider), on_partial)
    assert [partial.index for partial in partials] == [0, 0]
    assert len(result.images) == 2
    assert result.usage is not None
    assert result.usage.completion_tokens == 2 * 1056
