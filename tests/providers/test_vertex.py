"""The Vertex AI provider over ``httpx.MockTransport``: URLs, the size table, request bodies field
by field, answers (images, RAI filtering, Gemini safety blocks) and Google's errors mapped to ours.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import google.auth
import google.auth.exceptions
import httpx
import pytest

from mesh_images_asgi._config import ConfigError, Settings
from mesh_images_asgi._core.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from mesh_images_asgi._domain.catalog import Catalog, ModelEntry, load_catalog, parse_wxh
from mesh_images_asgi._domain.jobs import GenerationJob, ProviderResult
from mesh_images_asgi._domain.schemas import ImageRequest
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi._routing.service import ImageService
from mesh_images_asgi.providers.vertex import ApiKeyAuth, VertexProvider, vertex_provider
from mesh_images_asgi.providers.vertex_wire import BLOCKED_REASONS, size_table
from tests.emulators.oauth import OAuthEmulator

pytestmark = pytest.mark.anyio

CATALOG = load_catalog()
PNG_B64 = "iVBORw0KGgoAAAAASUVORK5CYII="  # a PNG's signature and end: passed through untouched
Handler = Callable[[httpx.Request], httpx.Response]


class Upstream:
    """A mock Vertex: records requests, answers from a list (the last answer repeats)."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers) or [predictions(1)]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


def predictions(count: int, **extra: Any) -> httpx.Response:
    item = {"bytesBase64Encoded": PNG_B64, "mimeType": "image/png", **extra}
    return httpx.Response(200, json={"predictions": [item] * count})


def google_error(
    status: int,
    name: str,
    message: str,
    details: list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    error = {"code": status, "message": message, "status": name, "details": details or []}
    return httpx.Response(status, json={"error": error}, headers=headers)


def provider(
    upstream: Handler, *, auth: Any = None, project: str | None = "p1", **options: Any
) -> VertexProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    return VertexProvider(client, auth or ApiKeyAuth("k"), project=project, **options)


def job(model: str = "vertex/imagen-3", catalog: Catalog = CATALOG, **fields: Any) -> GenerationJob:
    """A request checked and resolved exactly as the service does it (retired models served, as
    for a project that still has them: Imagen's wire format is tested here)."""
    settings = Settings(retired_models="serve")
    service = ImageService(settings, catalog, {"vertex": provider(Upstream())})
    return service.prepare(
        ImageRequest.model_validate({"prompt": "a fox", "model": model, **fields})
    )


async def generate(
    upstream: Handler, model: str = "vertex/imagen-3", **fields: Any
) -> ProviderResult:
    return await provider(upstream).generate(job(model, **fields))


async def failure(upstream: Handler, model: str = "vertex/imagen-3", **fields: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await generate(upstream, model, **fields)
    return caught.value


# --- URLs -------------------------------------------------------------------------------------

MODEL_PATH = "publishers/google/models/imagen-3.0-generate-002:predict"


@pytest.mark.parametrize(
    ("options", "model", "url"),
    [
        (
            {"location": "us-central1"},
            "vertex/imagen-3",
            f"https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1/{MODEL_PATH}",
        ),
        (
            {"location": "global"},
            "vertex/imagen-3",
            f"https://aiplatform.googleapis.com/v1/projects/p1/locations/global/{MODEL_PATH}",
        ),
        (
            {"location": "eu"},
            "vertex/imagen-3",
            f"https://aiplatform.eu.rep.googleapis.com/v1/projects/p1/locations/eu/{MODEL_PATH}",
        ),
        (
            {"location": "europe-west4", "base_url": "http://127.0.0.1:9/"},
            "vertex/imagen-3",
            f"http://127.0.0.1:9/v1/projects/p1/locations/europe-west4/{MODEL_PATH}",
        ),
        (
            {"project": None},
            "vertex/imagen-3",
            f"https://aiplatform.googleapis.com/v1/{MODEL_PATH}",
        ),
        (
            {"location": "europe-west4"},  # the entry pins its own location
            "vertex/gemini-3-pro-image",
            "https://aiplatform.googleapis.com/v1/projects/p1/locations/global/"
            "publishers/google/models/gemini-3-pro-image:generateContent",
        ),
    ],
)
async def test_endpoint_urls(options: dict[str, Any], model: str, url: str) -> None:
    upstream = Upstream(predictions(1) if "imagen" in model else gemini_answer())
    await provider(upstream, **options).generate(job(model))
    assert str(upstream.requests[0].url) == url


# --- the size table ---------------------------------------------------------------------------

VERTEX_ENTRIES = [entry for entry in CATALOG if entry.provider == "vertex"]


@pytest.mark.parametrize("entry", VERTEX_ENTRIES, ids=lambda entry: entry.id)
def test_every_catalog_size_maps_to_exactly_one_aspect_ratio(entry: ModelEntry) -> None:
    table = size_table(entry)
    assert set(table) == set(entry.sizes) - {"auto"}
    assert "auto" in entry.sizes
    for size, params in table.items():
        width, height = parse_wxh(size) or (0, 0)
        ratio_w, ratio_h = (int(side) for side in params.aspect_ratio.split(":"))
        assert abs(width / height - ratio_w / ratio_h) < 0.1 * ratio_w / ratio_h, size
    tiers = {params.image_size for params in table.values()}
    assert (tiers == {None}) == ("image_size" not in entry.options)


IMAGEN_3_TABLE = [
    ("1024x1024", "1:1"),
    ("896x1280", "3:4"),
    ("1280x896", "4:3"),
    ("768x1408", "9:16"),
    ("1408x768", "16:9"),
    ("1:1", "1:1"),
    ("3:4", "3:4"),
    ("4:3", "4:3"),
    ("9:16", "9:16"),
    ("16:9", "16:9"),
]


@pytest.mark.parametrize(("size", "ratio"), IMAGEN_3_TABLE)
async def test_imagen_3_size_to_aspect_ratio(size: str, ratio: str) -> None:
    upstream = Upstream()
    await generate(upstream, size=size)
    parameters = upstream.body()["parameters"]
    assert parameters["aspectRatio"] == ratio
    assert "sampleImageSize" not in parameters


@pytest.mark.parametrize(
    ("size", "ratio", "tier"),
    [
        ("1024x1024", "1:1", "1K"),
        ("1408x768", "16:9", "1K"),
        ("2048x2048", "1:1", "2K"),
        ("1792x2560", "3:4", "2K"),
        ("2560x1792", "4:3", "2K"),
        ("1536x2816", "9:16", "2K"),
        ("2816x1536", "16:9", "2K"),
        ("9:16", "9:16", "1K"),
    ],
)
async def test_imagen_4_size_to_aspect_ratio_and_sample_image_size(
    size: str, ratio: str, tier: str
) -> None:
    upstream = Upstream()
    await generate(upstream, "vertex/imagen-4", size=size)
    parameters = upstream.body()["parameters"]
    assert (parameters["aspectRatio"], parameters["sampleImageSize"]) == (ratio, tier)


GEMINI_25_TABLE = [
    ("1024x1024", "1:1"),
    ("832x1248", "2:3"),
    ("1248x832", "3:2"),
    ("864x1184", "3:4"),
    ("1184x864", "4:3"),
    ("896x1152", "4:5"),
    ("1152x896", "5:4"),
    ("768x1344", "9:16"),
    ("1344x768", "16:9"),
    ("1536x672", "21:9"),
]


@pytest.mark.parametrize(("size", "ratio"), GEMINI_25_TABLE)
async def test_gemini_size_to_aspect_ratio(size: str, ratio: str) -> None:
    upstream = Upstream(gemini_answer())
    await generate(upstream, "vertex/gemini-2.5-flash-image", size=size)
    assert upstream.body()["generationConfig"]["imageConfig"] == {"aspectRatio": ratio}


@pytest.mark.parametrize(
    ("size", "ratio", "tier"),
    [("1376x768", "16:9", "1K"), ("2528x1696", "3:2", "2K"), ("6336x2688", "21:9", "4K")],
)
async def test_gemini_3_size_to_aspect_ratio_and_image_size(
    size: str, ratio: str, tier: str
) -> None:
    upstream = Upstream(gemini_answer())
    await generate(upstream, "vertex/gemini-3-pro-image", size=size)
    config = upstream.body()["generationConfig"]["imageConfig"]
    assert config == {"aspectRatio": ratio, "imageSize": tier}


@pytest.mark.parametrize("size", [None, "auto"])
async def test_no_size_or_auto_sends_no_aspect_ratio(size: str | None) -> None:
    upstream = Upstream()
    await generate(upstream, "vertex/imagen-4", size=size)
    assert set(upstream.body()["parameters"]) == {"sampleCount", "includeRaiReason"}


async def test_a_size_without_an_exact_ratio_is_refused_before_any_request() -> None:
    catalog = load_catalog(
        {"vertex/imagen-3.0-generate-002": {"sizes": ["1024x1024", "1536x1024", "auto"]}}
    )
    upstream = Upstream()
    with pytest.raises(InvalidRequest) as caught:
        await provider(upstream).generate(job(catalog=catalog, size="1536x1024"))
    assert caught.value.param == "size"
    assert "1408x768" in caught.value.message
    assert "1:1" not in caught.value.message
    assert upstream.requests == []


# --- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "expected"),
    [
        (
            "vertex/imagen-3",
            {},
            {
                "instances": [{"prompt": "a fox"}],
                "parameters": {"sampleCount": 1, "includeRaiReason": True},
            },
        ),
        (
            "vertex/imagen-3",
            {"n": 3, "size": "1408x768", "output_format": "jpeg", "output_compression": 70},
            {
                "instances": [{"prompt": "a fox"}],
                "parameters": {
                    "sampleCount": 3,
                    "includeRaiReason": True,
                    "aspectRatio": "16:9",
                    "outputOptions": {"mimeType": "image/jpeg", "compressionQuality": 70},
                },
            },
        ),
        (
            "vertex/imagen-4-fast",
            {"n": 4, "output_format": "png", "seed": 7, "watermark": False},
            {
                "instances": [{"prompt": "a fox"}],
                "parameters": {
                    "sampleCount": 4,
                    "includeRaiReason": True,
                    "outputOptions": {"mimeType": "image/png"},
                    "seed": 7,
                    "addWatermark": False,
                },
            },
        ),
        (
            "vertex/imagen-4-ultra",
            {"size": "2048x2048", "watermark": True, "response_format": "url"},
            {
                "instances": [{"prompt": "a fox"}],
                "parameters": {
                    "sampleCount": 1,
                    "includeRaiReason": True,
                    "aspectRatio": "1:1",
                    "sampleImageSize": "2K",
                    "addWatermark": True,
                },
            },
        ),
        (
            "vertex/gemini-2.5-flash-image",
            {},
            {
                "contents": [{"role": "user", "parts": [{"text": "a fox"}]}],
                "generationConfig": {"responseModalities": ["IMAGE"], "candidateCount": 1},
            },
        ),
        (
            "vertex/gemini-3.1-flash-image",
            {"size": "21:9", "output_format": "jpeg", "output_compression": 80, "seed": 3},
            {
                "contents": [{"role": "user", "parts": [{"text": "a fox"}]}],
                "generationConfig": {
                    "responseModalities": ["IMAGE"],
                    "candidateCount": 1,
                    "imageConfig": {
                        "aspectRatio": "21:9",
                        "imageSize": "1K",
                        "imageOutputOptions": {"mimeType": "image/jpeg", "compressionQuality": 80},
                    },
                    "seed": 3,
                },
            },
        ),
    ],
)
async def test_request_bodies(model: str, fields: dict[str, Any], expected: dict[str, Any]) -> None:
    upstream = Upstream(predictions(4) if "imagen" in model else gemini_answer())
    await generate(upstream, model, **fields)
    assert upstream.body() == expected
    assert upstream.requests[0].headers["content-type"] == "application/json"
    assert upstream.requests[0].headers["x-goog-api-key"] == "k"


async def test_candidate_count_follows_n_where_the_catalog_allows_it() -> None:
    catalog = load_catalog({"vertex/gemini-2.5-flash-image": {"max_n": 3}})
    upstream = Upstream(gemini_answer(candidates=3))
    result = await provider(upstream).generate(job("vertex/gemini-2.5-flash-image", catalog, n=3))
    assert upstream.body()["generationConfig"]["candidateCount"] == 3
    assert len(result.images) == 3


@pytest.mark.parametrize("watermark", [None, True])
async def test_imagen_seed_needs_the_watermark_off(watermark: bool | None) -> None:
    upstream = Upstream()
    fields: dict[str, Any] = {"seed": 5} | ({} if watermark is None else {"watermark": watermark})
    error = await failure(upstream, **fields)
    assert isinstance(error, InvalidRequest)
    assert error.param == "seed"
    assert upstream.requests == []


# --- answers ----------------------------------------------------------------------------------


def gemini_answer(candidates: int = 1, *, thought: bool = False, **extra: Any) -> httpx.Response:
    parts: list[dict[str, Any]] = [{"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]
    if thought:
        parts.insert(
            0, {"inlineData": {"mimeType": "image/png", "data": "VEhPVUdIVA=="}, "thought": True}
        )
    body = {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": index}
            for index in range(candidates)
        ],
        **extra,
    }
    return httpx.Response(200, json=body)


async def test_imagen_answer_maps_images_revised_prompt_and_format() -> None:
    answer = httpx.Response(
        200,
        json={
            "predictions": [
                {
                    "bytesBase64Encoded": "AAAA",
                    "mimeType": "image/jpeg",
                    "prompt": "a red fox, dusk",
                },
                {"bytesBase64Encoded": "BBBB", "mimeType": "image/jpeg"},
            ]
        },
    )
    result = await generate(Upstream(answer), n=2, output_format="jpeg")
    assert [image.b64_json for image in result.images] == ["AAAA", "BBBB"]
    assert [image.revised_prompt for image in result.images] == ["a red fox, dusk", None]
    assert result.output_format == "jpeg"
    assert result.usage is None
    assert result.size is None
    assert result.quality is None


async def test_rai_filtered_predictions_leave_fewer_images() -> None:
    answer = httpx.Response(
        200,
        json={
            "predictions": [
                {"raiFilteredReason": "Filtered. Support codes: 1"},
                {"bytesBase64Encoded": "AAAA", "mimeType": "image/png"},
                {"contentType": "Positive Prompt", "safetyAttributes": {"categories": []}},
            ]
        },
    )
    result = await generate(Upstream(answer), n=2)
    assert [image.b64_json for image in result.images] == ["AAAA"]


@pytest.mark.parametrize(
    "body",
    [
        {"predictions": [{"raiFilteredReason": "All filtered. Support codes: 29310472"}] * 2},
        {"predictions": []},
        {},
    ],
)
async def test_no_image_left_is_a_content_policy_violation(body: dict[str, Any]) -> None:
    error = await failure(Upstream(httpx.Response(200, json=body)), n=2)
    assert isinstance(error, ContentPolicyViolation)
    assert (error.status, error.code, error.provider_code) == (
        400,
        "content_policy_violation",
        "rai_filtered",
    )
    assert ("29310472" in error.message) == bool(body.get("predictions"))


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b'{"predictions": [{"bytes'),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(200, json={"predictions": "nope"}),
    ],
)
async def test_unreadable_answers_are_bad_responses(answer: httpx.Response) -> None:
    error = await failure(Upstream(answer))
    assert isinstance(error, UpstreamError)
    assert (error.status, error.provider_code) == (502, "bad_response")


async def test_gemini_answer_skips_thought_images_and_maps_usage() -> None:
    usage = {"promptTokenCount": 9, "candidatesTokenCount": 1290, "totalTokenCount": 1400}
    answer = gemini_answer(thought=True, usageMetadata=usage)
    result = await generate(Upstream(answer), "vertex/gemini-3-pro-image")
    assert [image.b64_json for image in result.images] == [PNG_B64]
    assert result.output_format == "png"
    assert result.usage == Usage(prompt_tokens=9, completion_tokens=1290, total_tokens=1400)


@pytest.mark.parametrize("reason", sorted(BLOCKED_REASONS))
async def test_gemini_blocked_finish_reasons_are_content_policy_violations(reason: str) -> None:
    answer = httpx.Response(
        200, json={"candidates": [{"finishReason": reason, "finishMessage": "Blocked: 42"}]}
    )
    error = await failure(Upstream(answer), "vertex/gemini-2.5-flash-image")
    assert isinstance(error, ContentPolicyViolation)
    assert error.provider_code == reason
    assert "Blocked: 42" in error.message


async def test_gemini_blocked_prompt_is_a_content_policy_violation() -> None:
    feedback = {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "No."}
    answer = httpx.Response(200, json={"promptFeedback": feedback})
    error = await failure(Upstream(answer), "vertex/gemini-2.5-flash-image")
    assert isinstance(error, ContentPolicyViolation)
    assert error.provider_code == "PROHIBITED_CONTENT"


@pytest.mark.parametrize(
    "body",
    [
        {"candidates": [{"finishReason": "NO_IMAGE"}]},
        {"candidates": [{"content": {"parts": [{"text": "Here you go"}]}, "finishReason": "STOP"}]},
        {"candidates": []},
    ],
)
async def test_gemini_without_image_for_other_reasons_is_a_bad_response(
    body: dict[str, Any],
) -> None:
    error = await failure(Upstream(httpx.Response(200, json=body)), "vertex/gemini-2.5-flash-image")
    assert isinstance(error, UpstreamError)
    assert error.provider_code == "bad_response"


# --- errors -----------------------------------------------------------------------------------

RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}
KEY_INVALID = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
PROMPT_BLOCKED = (
    "Image generation failed with the following error: The prompt could not be submitted. "
    "This prompt contains sensitive words that violate Google's Responsible AI practices."
)
RESPONSE_BLOCKED = (
    "Image generation failed with the following error: The response is blocked, as it may "
    "violate our policies. Error Code: 58061214"
)
POLICY = "content_policy_violation"
AUTH = "upstream_auth_error"
UPSTREAM = "upstream_error"
LIMITED = "upstream_rate_limit_error"
ERROR_TABLE = [
    # answer, our status, code, provider_code, retry_after_seconds
    (google_error(400, "INVALID_ARGUMENT", PROMPT_BLOCKED), 400, POLICY, "prompt_blocked", None),
    (google_error(400, "INVALID_ARGUMENT", RESPONSE_BLOCKED), 400, POLICY, "prompt_blocked", None),
    (
        google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
        400,
        "invalid_request",
        "INVALID_ARGUMENT",
        None,
    ),
    (
        google_error(400, "FAILED_PRECONDITION", "not allowlisted"),
        400,
        "invalid_request",
        "FAILED_PRECONDITION",
        None,
    ),
    (
        google_error(401, "UNAUTHENTICATED", "Invalid credentials."),
        502,
        AUTH,
        "UNAUTHENTICATED",
        None,
    ),
    (google_error(403, "PERMISSION_DENIED", "Denied."), 502, AUTH, "PERMISSION_DENIED", None),
    (
        google_error(400, "INVALID_ARGUMENT", "API key not valid.", [KEY_INVALID]),
        502,
        AUTH,
        "API_KEY_INVALID",
        None,
    ),
    (
        google_error(404, "NOT_FOUND", "Model was not found."),
        502,
        UPSTREAM,
        "model_not_found",
        None,
    ),
    (
        google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", [RETRY_INFO]),
        429,
        LIMITED,
        "RESOURCE_EXHAUSTED",
        12.5,
    ),
    (
        google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", headers={"retry-after": "3"}),
        429,
        LIMITED,
        "RESOURCE_EXHAUSTED",
        3.0,
    ),
    (google_error(500, "INTERNAL", "Internal."), 502, UPSTREAM, "internal_provider_error", None),
    (google_error(503, "UNAVAILABLE", "Unavailable."), 502, UPSTREAM, "provider_overloaded", None),
    (httpx.Response(502, text="<html>Bad</html>"), 502, UPSTREAM, "internal_provider_error", None),
]


@pytest.mark.parametrize(("answer", "status", "code", "provider_code", "retry_after"), ERROR_TABLE)
async def test_google_errors_map_to_ours(
    answer: httpx.Response, status: int, code: str, provider_code: str, retry_after: float | None
) -> None:
    error = await failure(Upstream(answer))
    assert (error.status, error.code, error.provider_code) == (status, code, provider_code)
    assert error.retry_after_seconds == retry_after


async def test_an_error_message_never_carries_a_credential() -> None:
    leaked = google_error(
        400, "INVALID_ARGUMENT", "bad header Bearer ya29.a0AfB_secret_token_value"
    )
    error = await failure(Upstream(leaked))
    assert "ya29" not in error.message
    assert "ya29" not in json.dumps(error.provider_error)


@pytest.mark.parametrize(
    ("exc", "status", "provider_code"),
    [
        (httpx.ConnectError("refused"), 502, "connection_error"),
        (httpx.ReadTimeout("slow"), 504, "provider_timeout"),
    ],
)
async def test_transport_failures(exc: Exception, status: int, provider_code: str) -> None:
    def raising(request: httpx.Request) -> httpx.Response:
        raise exc

    error = await failure(raising)
    assert (error.status, error.provider_code) == (status, provider_code)


# --- 401 and re-authentication ----------------------------------------------------------------


class CountingAuth:
    """A refreshable credential: token ``t<n>``, bumped when Vertex rejects it."""

    def __init__(self) -> None:
        self.generation = 1
        self.rejections: list[str] = []

    async def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer t{self.generation}"}

    async def rejected(self, headers: Mapping[str, str]) -> bool:
        self.rejections.append(headers["authorization"])
        self.generation += 1
        return True

    async def aclose(self) -> None:
        return None


async def test_a_rejected_token_is_refreshed_and_the_request_sent_once_more() -> None:
    upstream = Upstream(google_error(401, "UNAUTHENTICATED", "expired"), predictions(1))
    auth = CountingAuth()
    result = await provider(upstream, auth=auth).generate(job())
    assert len(result.images) == 1
    assert [r.headers["authorization"] for r in upstream.requests] == ["Bearer t1", "Bearer t2"]
    assert auth.rejections == ["Bearer t1"]


async def test_a_second_401_is_an_upstream_auth_error() -> None:
    upstream = Upstream(google_error(401, "UNAUTHENTICATED", "nope"))
    with pytest.raises(UpstreamAuthError):
        await provider(upstream, auth=CountingAuth()).generate(job())
    assert len(upstream.requests) == 2


async def test_an_api_key_is_not_retried_after_a_401() -> None:
    upstream = Upstream(google_error(401, "UNAUTHENTICATED", "nope"))
    with pytest.raises(UpstreamAuthError):
        await generate(upstream)
    assert len(upstream.requests) == 1


async def test_other_errors_are_not_retried() -> None:
    upstream = Upstream(google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded."))
    with pytest.raises(UpstreamRateLimited):
        await provider(upstream, auth=CountingAuth()).generate(job())
    assert len(upstream.requests) == 1


# --- configuration ----------------------------------------------------------------------------


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(Upstream()))


def test_not_enabled_without_credentials() -> None:
    assert vertex_provider(Settings(), _client()) is None


async def test_api_key_mode_uses_the_express_endpoint() -> None:
    upstream = Upstream()
    client = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    settings = Settings(vertex_api_key="AQ.key", google_cloud_project="ignored")
    vertex = vertex_provider(settings, client)
    assert vertex is not None
    await vertex.generate(job())
    request = upstream.requests[0]
    assert request.url.path == f"/v1/{MODEL_PATH}"
    assert request.headers["x-goog-api-key"] == "AQ.key"
    assert "authorization" not in request.headers


async def test_service_account_file_enables_token_mode(tmp_path: Path) -> None:
    key_file = OAuthEmulator().service_account_file(
        tmp_path, token_uri="http://127.0.0.1:9/token", project_id="from-file"
    )
    upstream = Upstream()
    client = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    settings = Settings(google_application_credentials=key_file, google_cloud_location="asia-east1")
    vertex = vertex_provider(settings, client)
    assert vertex is not None
    try:
        assert vertex.url(CATALOG.resolve("vertex/imagen-3")) == (
            "https://asia-east1-aiplatform.googleapis.com/v1/projects/from-file/locations/"
            f"asia-east1/{MODEL_PATH}"
        )
        # Nothing listens on the key file's token_uri: no token, so no Vertex request either.
        with pytest.raises(UpstreamError) as caught:
            await vertex.generate(job())
        assert caught.value.provider_code == "connection_error"
        assert upstream.requests == []
    finally:
        await vertex.aclose()


def test_an_unusable_credentials_file_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "key.json"
    broken.write_text('{"type": "service_account"}')
    with pytest.raises(ConfigError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        vertex_provider(Settings(google_application_credentials=broken), _client())


def test_a_project_without_default_credentials_is_not_enabled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_adc(**kwargs: Any) -> Any:
        raise google.auth.exceptions.DefaultCredentialsError("none")

    monkeypatch.setattr(google.auth, "default", no_adc)
    assert vertex_provider(Settings(google_cloud_project="p"), _client()) is None
    assert "not enabled" in caplog.text
