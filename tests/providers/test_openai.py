"""The OpenAI adapter against ``httpx.MockTransport``: request, response, errors, streaming."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.errors import (
    ContentPolicyViolation,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from mesh_images_asgi._domain.catalog import load_catalog
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialImage,
    ProviderResult,
)
from mesh_images_asgi._domain.schemas import parse_request
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi._routing.service import ImageService
from mesh_images_asgi.providers.openai import OpenAIProvider
from mesh_images_asgi.providers.registry import build_providers

KEY = "sk-test-0123456789abcdef"
URL = "https://api.test/v1/images/generations"
Handler = Callable[[httpx.Request], httpx.Response]

LEGACY = {
    "openai/dall-e-3": {
        "provider": "openai",
        "upstream": "dall-e-3",
        "sizes": ["1024x1024"],
        "qualities": ["standard", "hd"],
        "accepts_extra_fields": True,
        "options": {"upstream_response_format": True},
    }
}


def make_job(body: dict[str, Any], provider: OpenAIProvider) -> GenerationJob:
    """``body`` checked and resolved exactly as the service does it."""
    service = ImageService(Settings(), load_catalog(LEGACY), {"openai": provider})
    return service.prepare(parse_request(json.dumps(body).encode()))


async def generate(
    handler: Handler,
    body: dict[str, Any],
    partials: list[PartialImage] | None = None,
    options: Mapping[str, str] | None = None,
) -> ProviderResult:
    async def on_partial(partial: PartialImage) -> None:
        assert partials is not None
        partials.append(partial)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = OpenAIProvider(
            client, api_key=KEY, base_url="https://api.test/v1/", **(options or {})
        )
        job = make_job(body, provider)
        return await provider.generate(job, on_partial if partials is not None else None)


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def recording(requests: list[httpx.Request], reply: Handler | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return (reply or answer({"created": 1, "data": [{"b64_json": "AAAA"}]}))(request)

    return handler


def error(status: int, code: str | None, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": "m", "type": "t", "param": None, "code": code, **extra}}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {"authorization": f"Bearer {KEY}"}),
        (
            {"organization": "org-1", "project": "proj_1"},
            {
                "authorization": f"Bearer {KEY}",
                "openai-organization": "org-1",
                "openai-project": "proj_1",
            },
        ),
    ],
)
async def test_posts_json_with_the_credentials(
    options: dict[str, str], expected: dict[str, str]
) -> None:
    requests: list[httpx.Request] = []
    await generate(
        recording(requests), {"model": "openai/gpt-image-2", "prompt": "a"}, None, options
    )
    [request] = requests
    assert (request.method, str(request.url)) == ("POST", URL)
    assert request.headers["content-type"] == "application/json"
    sent = {
        name: request.headers.get(name)
        for name in ("authorization", "openai-organization", "openai-project")
    }
    assert sent == {name: expected.get(name) for name in sent}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "openai/gpt-image-2", "prompt": "a", "response_format": "b64_json"}, None),
        ({"model": "openai/dall-e-3", "prompt": "a", "response_format": "b64_json"}, "b64_json"),
        ({"model": "openai/dall-e-3", "prompt": "a"}, "url"),
    ],
)
async def test_response_format_goes_only_to_models_whose_entry_takes_it(
    body: dict[str, Any], expected: str | None
) -> None:
    requests: list[httpx.Request] = []
    await generate(recording(requests), body)
    assert json.loads(requests[0].content).get("response_format") == expected


@pytest.mark.anyio
async def test_maps_the_response() -> None:
    body = {
        "created": 1713833628,
        "data": [
            {"b64_json": "AAAA", "url": None, "revised_prompt": None},
            {"url": "https://img.test/1.png", "revised_prompt": "a red fox"},
        ],
        "background": "transparent",
        "output_format": "webp",
        "quality": "high",
        "size": "1536x1024",
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
            "output_tokens": 60,
            "total_tokens": 110,
            "output_tokens_details": {"image_tokens": 60, "text_tokens": 0},
        },
    }
    result = await generate(answer(body), {"model": "openai/gpt-image-2", "prompt": "a"})
    assert result == ProviderResult(
        images=[
            GeneratedImage(b64_json="AAAA"),
            GeneratedImage(url="https://img.test/1.png", revised_prompt="a red fox"),
        ],
        created=1713833628,
        output_format="webp",
        background="transparent",
        quality="high",
        size="1536x1024",
        usage=Usage(
            prompt_tokens=50,
            completion_tokens=60,
            total_tokens=110,
            details={
                "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
                "output_tokens_details": {"image_tokens": 60, "text_tokens": 0},
            },
        ),
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        (
            {"input_tokens": 3, "output_tokens": 4},
            Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        ),
        ({"total_tokens": 9}, None),
    ],
)
async def test_usage_appears_only_when_the_upstream_counted(
    usage: dict[str, Any] | None, expected: Usage | None
) -> None:
    body = {"created": 1, "data": [{"b64_json": "AAAA"}], "usage": usage}
    result = await generate(answer(body), {"model": "openai/gpt-image-2", "prompt": "a"})
    assert result.usage == expected
    assert (result.output_format, result.size) == (None, None)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content",
    [
        b"<html>oops</html>",
        b"[]",
        b'{"created": 1}',
        b'{"data": []}',
        b'{"data": [{}]}',
        b'{"data": ["AAAA"]}',
        b'{"data": [{"b64_json": 5}]}',
    ],
)
async def test_unreadable_answers_are_bad_response(content: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=content)

    with pytest.raises(UpstreamError) as raised:
        await generate(handler, {"model": "openai/gpt-image-2", "prompt": "a"})
    assert raised.value.provider_code == "bad_response"


ERRORS: list[tuple[int, Any, dict[str, str], type[GatewayError], str | None, float | None]] = [
    (
        400,
        error(
            400,
            "moderation_blocked",
            type="image_generation_user_error",
            moderation_details={"moderation_stage": "output", "categories": ["x"]},
        ),
        {},
        ContentPolicyViolation,
        "moderation_blocked",
        None,
    ),
    (
        400,
        error(400, "content_policy_violation"),
        {},
        ContentPolicyViolation,
        "content_policy_violation",
        None,
    ),
    (400, error(400, "invalid_value", param="size"), {}, InvalidRequest, "invalid_value", None),
    (401, error(401, "invalid_api_key"), {}, UpstreamAuthError, "invalid_api_key", None),
    (403, error(403, None), {}, UpstreamAuthError, "authentication_error", None),
    (404, error(404, "model_not_found"), {}, UpstreamError, "model_not_found", None),
    (
        429,
        error(429, "rate_limit_exceeded"),
        {"retry-after-ms": "1500", "retry-after": "9"},
        UpstreamRateLimited,
        "rate_limit_exceeded",
        1.5,
    ),
    (
        429,
        error(429, "insufficient_quota"),
        {"retry-after": "7"},
        UpstreamRateLimited,
        "insufficient_quota",
        7.0,
    ),
    # No upstream hint: None here (the router backs off); the client still gets Retry-After: 1.
    (429, error(429, None), {}, UpstreamRateLimited, "rate_limited", None),
    (500, error(500, None), {}, UpstreamError, "internal_provider_error", None),
    (502, "<html>bad gateway</html>", {}, UpstreamError, "internal_provider_error", None),
    (503, error(503, "server_is_overloaded"), {}, UpstreamError, "provider_overloaded", None),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "provider_code", "retry_after"), ERRORS
)
async def test_error_mapping(
    status: int,
    body: Any,
    headers: dict[str, str],
    kind: type[GatewayError],
    provider_code: str | None,
    retry_after: float | None,
) -> None:
    with pytest.raises(kind) as raised:
        await generate(
            answer(body, status, headers), {"model": "openai/gpt-image-2", "prompt": "a"}
        )
    assert type(raised.value) is kind
    assert raised.value.provider_code == provider_code
    assert raised.value.retry_after_seconds == retry_after


@pytest.mark.anyio
async def test_a_refusal_keeps_the_upstream_error_object_without_credentials() -> None:
    body = error(
        400,
        "moderation_blocked",
        moderation_details={"moderation_stage": "input", "categories": ["violence"]},
    )
    body["error"]["message"] = "Rejected for key sk-proj-abcd****************wxyz."
    with pytest.raises(ContentPolicyViolation) as raised:
        await generate(answer(body, 400), {"model": "openai/gpt-image-2", "prompt": "a"})
    provider_error = raised.value.provider_error
    assert provider_error is not None
    assert provider_error["moderation_details"] == {
        "moderation_stage": "input",
        "categories": ["violence"],
    }
    assert provider_error["message"] == "Rejected for key [redacted]."
    assert "sk-proj" not in raised.value.message


@pytest.mark.anyio
async def test_an_upstream_bad_request_names_the_param() -> None:
    body = error(400, "unknown_parameter", param="foo")
    with pytest.raises(InvalidRequest) as raised:
        await generate(answer(body, 400), {"model": "openai/gpt-image-2", "prompt": "a", "foo": 1})
    assert (raised.value.param, raised.value.provider_error) == ("foo", body["error"])


class _Stream(httpx.AsyncByteStream):
    """A response body: these chunks, then ``then`` raised (or the end), and a record of close."""

    def __init__(self, chunks: list[bytes], then: Exception | None = None) -> None:
        self.chunks = chunks
        self.then = then
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.then is not None:
            raise self.then

    async def aclose(self) -> None:
        self.closed = True


def streaming(stream: _Stream, status: int = 200) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=stream, headers={"content-type": "text/event-stream"})

    return handler


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raised", "kind", "provider_code"),
    [
        (httpx.ConnectError("refused"), UpstreamError, "connection_error"),
        (
            httpx.ConnectTimeout("aiohttp reports a dropped connection so"),
            UpstreamError,
            "connection_error",
        ),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            UpstreamError,
            "connection_error",
        ),
        (httpx.ReadTimeout("slow"), GatewayTimeout, "provider_timeout"),
        (httpx.PoolTimeout("busy"), GatewayTimeout, "provider_timeout"),
    ],
)
async def test_transport_failures_before_the_answer(
    raised: Exception, kind: type[GatewayError], provider_code: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    with pytest.raises(kind) as caught:
        await generate(handler, {"model": "openai/gpt-image-2", "prompt": "a"})
    assert caught.value.provider_code == provider_code


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raised", "kind", "provider_code"),
    [
        (httpx.ReadError("reset"), UpstreamError, "bad_response"),
        (httpx.RemoteProtocolError("peer closed connection"), UpstreamError, "bad_response"),
        (httpx.ConnectTimeout("aiohttp's ServerDisconnectedError"), UpstreamError, "bad_response"),
        (httpx.ReadTimeout("slow"), GatewayTimeout, "provider_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_transport_failures_while_reading_the_answer(
    raised: Exception, kind: type[GatewayError], provider_code: str, stream: bool
) -> None:
    body = _Stream([b'{"created": 1, "da'], raised)
    request: dict[str, Any] = {"model": "openai/gpt-image-2", "prompt": "a"}
    if stream:
        body = _Stream([_event(_PARTIAL_EVENT)], raised)
        request |= {"stream": True, "partial_images": 1}
    with pytest.raises(kind) as caught:
        await generate(streaming(body), request, [] if stream else None)
    assert caught.value.provider_code == provider_code
    assert body.closed


def _event(payload: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name or payload['type']}\n".encode()
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


_PARTIAL_EVENT = {
    "type": "image_generation.partial_image",
    "b64_json": "UA==",
    "created_at": 5,
    "size": "1024x1024",
    "quality": "high",
    "background": "opaque",
    "output_format": "png",
    "partial_image_index": 0,
}


def _completed(b64: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "type": "image_generation.completed",
        "b64_json": b64,
        "created_at": 1700000000,
        "size": "1024x1024",
        "quality": "high",
        "background": "opaque",
        "output_format": "png",
        "usage": {
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_tokens_details": {"text_tokens": input_tokens, "image_tokens": 0},
        },
    }


@pytest.mark.anyio
async def test_streams_partials_then_the_completed_images() -> None:
    chunks = [
        b": keep-alive\r\n\r\n",
        _event(_PARTIAL_EVENT).replace(b"\n", b"\r\n"),
        _event(_PARTIAL_EVENT | {"partial_image_index": 1, "b64_json": "UQ=="})[:40],
        _event(_PARTIAL_EVENT | {"partial_image_index": 1, "b64_json": "UQ=="})[40:],
        _event(_completed("RjE=", 10, 100)),
        _event(_PARTIAL_EVENT | {"b64_json": "Ug=="}),
        _event(_completed("RjI=", 10, 200)),
        b"data: [DONE]\n\n",  # not documented for images; the SDK stops at it, so do we
        _event(_completed("RjM=", 10, 200)),
    ]
    requests: list[httpx.Request] = []
    partials: list[PartialImage] = []
    body = {
        "model": "openai/gpt-image-2",
        "prompt": "a",
        "n": 2,
        "stream": True,
        "partial_images": 2,
    }
    result = await generate(recording(requests, streaming(_Stream(chunks))), body, partials)
    sent = json.loads(requests[0].content)
    assert (sent["stream"], sent["partial_images"], sent["n"]) == (True, 2, 2)
    assert partials == [PartialImage("UA==", 0), PartialImage("UQ==", 1), PartialImage("Ug==", 0)]
    assert result == ProviderResult(
        images=[GeneratedImage(b64_json="RjE="), GeneratedImage(b64_json="RjI=")],
        created=1700000000,
        output_format="png",
        background="opaque",
        quality="high",
        size="1024x1024",
        usage=Usage(
            prompt_tokens=20,
            completion_tokens=300,
            total_tokens=320,
            details={"input_tokens_details": {"text_tokens": 20, "image_tokens": 0}},
        ),
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("frame", "kind", "provider_code"),
    [
        (
            {
                "error": {
                    "message": "blocked",
                    "type": "image_generation_user_error",
                    "param": None,
                    "code": "moderation_blocked",
                }
            },
            ContentPolicyViolation,
            "moderation_blocked",
        ),
        (
            {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}},
            UpstreamError,
            "internal_provider_error",
        ),
    ],
)
async def test_an_error_event_in_the_stream_is_mapped(
    frame: dict[str, Any], kind: type[GatewayError], provider_code: str
) -> None:
    stream = _Stream([_event(_PARTIAL_EVENT), _event(frame, "error")])
    partials: list[PartialImage] = []
    body = {"model": "openai/gpt-image-2", "prompt": "a", "stream": True, "partial_images": 1}
    with pytest.raises(kind) as raised:
        await generate(streaming(stream), body, partials)
    assert raised.value.provider_code == provider_code
    assert raised.value.provider_error == frame["error"]
    assert len(partials) == 1
    assert stream.closed


@pytest.mark.anyio
@pytest.mark.parametrize(
    "chunks",
    [
        [_event(_PARTIAL_EVENT)],
        [b"data: {not json\n\n"],
        [_event(_PARTIAL_EVENT | {"partial_image_index": None})],
        [_event(_completed("RjE=", 1, 1) | {"b64_json": None})],
    ],
)
async def test_a_stream_without_a_readable_final_image_is_bad_response(
    chunks: list[bytes],
) -> None:
    body = {"model": "openai/gpt-image-2", "prompt": "a", "stream": True, "partial_images": 1}
    with pytest.raises(UpstreamError) as raised:
        await generate(streaming(_Stream(chunks)), body, [])
    assert raised.value.provider_code == "bad_response"


@pytest.mark.anyio
async def test_an_error_answer_to_a_stream_request_is_mapped() -> None:
    stream = _Stream([json.dumps(error(429, "rate_limit_exceeded")).encode()])
    body = {"model": "openai/gpt-image-2", "prompt": "a", "stream": True, "partial_images": 1}
    with pytest.raises(UpstreamRateLimited) as raised:
        await generate(streaming(stream, 429), body, [])
    assert raised.value.provider_code == "rate_limit_exceeded"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "sink"),
    [
        ({"stream": True, "partial_images": 2}, False),  # no sink: nobody to hand partials to
        ({"stream": True}, True),  # the client asked for no partials
        ({"stream": True, "partial_images": 0}, True),
    ],
)
async def test_the_json_endpoint_is_used_unless_partials_are_wanted(
    body: dict[str, Any], sink: bool
) -> None:
    requests: list[httpx.Request] = []
    request = {"model": "openai/gpt-image-2", "prompt": "a", **body}
    await generate(recording(requests), request, [] if sink else None)
    sent = json.loads(requests[0].content)
    assert "stream" not in sent
    assert "partial_images" not in sent


@pytest.mark.anyio
async def test_cancelling_closes_the_upstream_stream() -> None:
    class Endless(_Stream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield _event(_PARTIAL_EVENT)
            await anyio.sleep_forever()
            yield b""  # pragma: no cover

        async def aclose(self) -> None:
            await anyio.lowlevel.checkpoint()  # a real transport awaits while closing: cancellable
            self.closed = True

    stream = Endless([])
    partials: list[PartialImage] = []
    body = {"model": "openai/gpt-image-2", "prompt": "a", "stream": True, "partial_images": 1}
    with anyio.move_on_after(0.2):
        await generate(streaming(stream), body, partials)
    assert partials == [PartialImage("UA==", 0)]
    assert stream.closed


@pytest.mark.parametrize(("key", "enabled"), [(None, False), ("", False), ("sk-x", True)])
def test_openai_is_enabled_by_its_key(key: str | None, enabled: bool) -> None:
    settings = Settings(openai_api_key=key, openai_base_url="https://example.test/v1")
    providers = build_providers(settings, httpx.AsyncClient())
    assert ("openai" in providers) is enabled
