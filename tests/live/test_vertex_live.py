"""End to end: a live gateway on 127.0.0.1 in front of the Vertex AI and OAuth2 emulators, called
with the ``meshapi`` and ``openai`` SDKs and plain HTTP.

The gateway authenticates with a real service-account key file whose ``token_uri`` is the OAuth
emulator, so google-auth's own JWT-bearer refresh runs; a second gateway uses an API key. The
emulated project still serves the models Google shut down, and the gateways serve them
(``retired_models="serve"``): Imagen's ``:predict`` wire format is tested here.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from meshapi import ImageGenerationParams, MeshAPI, MeshAPIError
from openai import OpenAI

from mesh_images_asgi import ImagesApp, Settings
from tests.emulators.oauth import OAuthEmulator
from tests.emulators.vertex import PROJECT, SHUT_DOWN, VertexEmulator
from tests.helpers import decode_image
from tests.support.live import serve

API_KEY = "AQ.emulated-express-key"
IMAGEN_3 = "imagen-3.0-generate-002:predict"
REGIONAL = f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/"


class Upstreams:
    """The emulators and the gateways in front of them."""

    def __init__(self, oauth: OAuthEmulator, vertex: VertexEmulator) -> None:
        self.oauth = oauth
        self.vertex = vertex
        self.vertex_url = ""
        self.gateway = ""
        self.key_gateway = ""


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    oauth = OAuthEmulator()
    vertex = VertexEmulator(oauth=oauth, api_key=API_KEY)
    _still_serving_everything(vertex)
    up = Upstreams(oauth, vertex)
    with serve(oauth.app) as oauth_url, serve(vertex.app) as vertex_url:
        key_file = oauth.service_account_file(
            tmp_path_factory.mktemp("keys"), token_uri=f"{oauth_url}/token", project_id=PROJECT
        )
        fast_deadline = {"vertex/imagen-4.0-fast-generate-001": {"upstream_timeout": 0.5}}
        token_mode = Settings(
            google_application_credentials=key_file,
            vertex_base_url=vertex_url,
            models=fast_deadline,
            max_attempts=1,  # error mapping here; retries and circuits: tests/faults
            breaker_minimum_calls=1_000_000,
            retired_models="serve",
        )
        key_mode = Settings(
            vertex_api_key=API_KEY,
            vertex_base_url=vertex_url,
            max_attempts=1,
            breaker_minimum_calls=1_000_000,
            retired_models="serve",
        )
        with serve(ImagesApp(token_mode)) as gateway, serve(ImagesApp(key_mode)) as key_gateway:
            up.vertex_url, up.gateway, up.key_gateway = vertex_url, gateway, key_gateway
            yield up


def _still_serving_everything(vertex: VertexEmulator) -> None:
    for model in SHUT_DOWN:
        vertex.still_serving(model)


@pytest.fixture
def up(upstreams: Upstreams) -> Iterator[Upstreams]:
    yield upstreams
    upstreams.vertex.reset()
    upstreams.vertex.api_key = API_KEY
    upstreams.oauth.lifetime = 3600
    upstreams.oauth.refuse_with = None


def generate(base_url: str, **body: Any) -> httpx.Response:
    body.setdefault("prompt", "a red fox in the snow")
    body.setdefault("model", "vertex/imagen-3")
    return httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=30)


def test_imagen_with_the_meshapi_sdk(up: Upstreams) -> None:
    client = MeshAPI(base_url=up.gateway, token="x", max_retries=0)
    response = client.images.generate(
        ImageGenerationParams(model="vertex/imagen-3", prompt="a red fox", n=2, size="1408x768")
    )
    assert len(response.data) == 2
    images = [decode_image(item.image_bytes()) for item in response.data]
    assert [(image.format, image.size) for image in images] == [("PNG", (128, 72))] * 2
    assert images[0].getpixel((0, 0)) != images[1].getpixel((0, 0))
    assert all(item.b64_json and item.url is None for item in response.data)  # b64 always
    assert response.data[0].revised_prompt == "a red fox, in soft morning light"
    assert response.output_format == "png"
    assert response.usage is None
    (request,) = up.vertex.requests
    assert request.path == REGIONAL + IMAGEN_3
    assert request.headers["authorization"].startswith("Bearer ya29.emu-")
    assert request.body == {
        "instances": [{"prompt": "a red fox"}],
        "parameters": {"sampleCount": 2, "includeRaiReason": True, "aspectRatio": "16:9"},
    }


def test_imagen_4_with_the_openai_sdk(up: Upstreams) -> None:
    client = OpenAI(base_url=f"{up.gateway}/v1", api_key="x", max_retries=0)
    response = client.images.generate(
        model="vertex/imagen-4",
        prompt="a lighthouse",
        size="1024x1024",
        output_format="jpeg",
        output_compression=60,
    )
    assert response.data is not None
    (item,) = response.data
    assert item.b64_json is not None
    image = decode_image(base64.b64decode(item.b64_json))
    assert (image.format, image.size) == ("JPEG", (8, 8))
    parameters = up.vertex.requests[0].body["parameters"]
    assert parameters["aspectRatio"] == "1:1"
    assert parameters["sampleImageSize"] == "1K"
    assert parameters["outputOptions"] == {"mimeType": "image/jpeg", "compressionQuality": 60}


def test_gemini_image_model_with_the_meshapi_sdk(up: Upstreams) -> None:
    client = MeshAPI(base_url=up.gateway, token="x", max_retries=0)
    response = client.images.generate(
        ImageGenerationParams(model="vertex/nano-banana-pro", prompt="a fox", size="2752x1536")
    )
    (item,) = response.data  # the emulator's "thought" image is not an answer
    assert decode_image(item.image_bytes()).size == (128, 72)
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (12, 1290)
    (request,) = up.vertex.requests
    assert request.path == (
        f"/v1/projects/{PROJECT}/locations/global/publishers/google/models/"
        "gemini-3-pro-image:generateContent"
    )
    assert request.body["generationConfig"] == {
        "responseModalities": ["IMAGE"],
        "candidateCount": 1,
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
    }


def test_gemini_with_the_openai_sdk(up: Upstreams) -> None:
    client = OpenAI(base_url=f"{up.gateway}/v1", api_key="x", max_retries=0)
    response = client.images.generate(model="vertex/gemini-2.5-flash-image", prompt="a fox")
    assert response.data is not None
    assert response.data[0].b64_json is not None
    assert decode_image(base64.b64decode(response.data[0].b64_json)).size == (8, 8)
    assert "imageConfig" not in up.vertex.requests[0].body["generationConfig"]


def test_streaming_ends_with_the_images_as_b64_json(up: Upstreams) -> None:
    client = MeshAPI(base_url=up.gateway, token="x", max_retries=0)
    params = ImageGenerationParams(model="vertex/imagen-3", prompt="a fox", n=2, size="3:4")
    chunks = list(client.images.stream(params))
    assert chunks[0].status == "processing"
    final = chunks[-1]
    assert final.status == "completed"
    assert [decode_image(item.image_bytes()).size for item in final.data] == [(24, 32)] * 2
    assert all(item.b64_json for item in final.data)


def test_api_key_mode_uses_the_express_endpoint(up: Upstreams) -> None:
    response = generate(up.key_gateway, size="9:16")
    assert response.status_code == 200, response.text
    (request,) = up.vertex.requests
    assert request.path == f"/v1/publishers/google/models/{IMAGEN_3}"
    assert request.headers["x-goog-api-key"] == API_KEY
    assert "authorization" not in request.headers
    assert decode_image(base64.b64decode(response.json()["data"][0]["b64_json"])).size == (72, 128)


def test_some_images_filtered_leave_fewer_images(up: Upstreams) -> None:
    up.vertex.filter_images(1)
    response = generate(up.gateway, n=3)
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2


def test_the_models_page_lists_the_vertex_models(up: Upstreams) -> None:
    ids = {model["id"] for model in httpx.get(f"{up.gateway}/v1/models").json()["data"]}
    assert {"vertex/gemini-3.1-flash-image", "vertex/gemini-3-pro-image"} <= ids
    assert "vertex/imagen-3.0-generate-002" not in ids  # retired: listed only when asked for
    url = f"{up.gateway}/v1/models?include_retired=true"
    assert "vertex/imagen-3.0-generate-002" in {m["id"] for m in httpx.get(url).json()["data"]}


# --- errors -----------------------------------------------------------------------------------

POLICY, AUTH, UPSTREAM = "content_policy_violation", "upstream_auth_error", "upstream_error"
IMAGEN = {"model": "vertex/imagen-3"}
GEMINI = {"model": "vertex/gemini-2.5-flash-image"}
ERRORS = [
    # how, request, status, code, provider_code
    ("prompt_blocked", IMAGEN, 400, POLICY, "prompt_blocked"),
    ("response_blocked", IMAGEN, 400, POLICY, "prompt_blocked"),
    ("invalid_argument", IMAGEN, 400, "invalid_request", "INVALID_ARGUMENT"),
    ("unauthenticated", IMAGEN, 502, AUTH, "UNAUTHENTICATED"),
    ("permission_denied", IMAGEN, 502, AUTH, "PERMISSION_DENIED"),
    ("not_found", IMAGEN, 502, UPSTREAM, "model_not_found"),
    ("resource_exhausted", IMAGEN, 429, "upstream_rate_limit_error", "RESOURCE_EXHAUSTED"),
    ("internal", IMAGEN, 502, UPSTREAM, "internal_provider_error"),
    ("unavailable", IMAGEN, 502, UPSTREAM, "provider_overloaded"),
    ("filter_all", {**IMAGEN, "n": 2}, 400, POLICY, "rai_filtered"),
    ("image_safety", GEMINI, 400, POLICY, "IMAGE_SAFETY"),
    ("prompt_feedback", GEMINI, 400, POLICY, "PROHIBITED_CONTENT"),
    ("drop", IMAGEN, 502, UPSTREAM, "bad_response"),
    ("malformed", IMAGEN, 502, UPSTREAM, "bad_response"),
    ("slow", {"model": "vertex/imagen-4-fast"}, 504, "gateway_timeout", "provider_timeout"),
]


def inject(vertex: VertexEmulator, how: str) -> None:
    scripted: dict[str, Callable[[], None]] = {
        "filter_all": lambda: vertex.filter_images(2),
        "image_safety": lambda: vertex.block_candidates("IMAGE_SAFETY"),
        "prompt_feedback": lambda: vertex.block_prompt("PROHIBITED_CONTENT"),
        "drop": vertex.drop_connection,
        "malformed": vertex.malformed_answer,
        # A 401 makes the gateway refresh its token and try once more: both attempts fail here.
        "unauthenticated": lambda: vertex.inject_error("unauthenticated", times=2),
    }
    if how == "slow":
        vertex.latency = 1.0
    else:
        scripted.get(how, lambda: vertex.inject_error(how))()


@pytest.mark.parametrize(("how", "request_fields", "status", "code", "provider_code"), ERRORS)
def test_upstream_failures_map_to_the_contract(
    up: Upstreams,
    how: str,
    request_fields: dict[str, Any],
    status: int,
    code: str,
    provider_code: str,
) -> None:
    inject(up.vertex, how)
    response = generate(up.gateway, **request_fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error.get("provider_code")) == (code, provider_code)
    assert response.headers["x-request-id"] == response.json()["request_id"]
    assert "ya29." not in response.text
    if status == 429:
        assert response.headers["retry-after"] == "7"
        assert error["retry_after_seconds"] == 7.0
    else:
        assert "retry-after" not in response.headers


def test_rate_limit_with_the_meshapi_sdk(up: Upstreams) -> None:
    up.vertex.inject_error("resource_exhausted")
    client = MeshAPI(base_url=up.gateway, token="x", max_retries=0)
    with pytest.raises(MeshAPIError) as caught:
        client.images.generate(ImageGenerationParams(model="vertex/imagen-3", prompt="a fox"))
    assert (caught.value.status, caught.value.error_code) == (429, "upstream_rate_limit_error")
    assert caught.value.retry_after_seconds == 7


def test_content_policy_with_the_openai_sdk(up: Upstreams) -> None:
    up.vertex.inject_error("prompt_blocked")
    client = OpenAI(base_url=f"{up.gateway}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="vertex/imagen-3", prompt="something refused")
    assert caught.value.code == "content_policy_violation"


def test_a_size_vertex_cannot_render_exactly_is_refused(up: Upstreams) -> None:
    response = generate(up.gateway, size="1536x1024")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "size"
    assert "1408x768" in error["message"]
    assert up.vertex.requests == []


def test_a_wrong_api_key_is_an_upstream_auth_error(up: Upstreams) -> None:
    up.vertex.api_key = "AQ.another-key"
    response = generate(up.key_gateway)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == AUTH
    assert response.json()["error"]["provider_code"] == "API_KEY_INVALID"
    assert API_KEY not in response.text


# --- tokens -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_expired_token_is_refreshed_once_under_50_concurrent_requests(
    up: Upstreams,
) -> None:
    up.oauth.lifetime = 1
    up.oauth.revoke_all()  # Vertex refuses the gateway's token: it fetches a 1 s one
    assert generate(up.gateway).status_code == 200
    await anyio.sleep(1.1)
    up.oauth.lifetime = 3600
    calls = up.oauth.calls
    up.vertex.reset()

    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=up.gateway, timeout=30) as client:

        async def one() -> None:
            body = {"model": "vertex/imagen-3", "prompt": "a fox"}
            statuses.append((await client.post("/v1/images/generations", json=body)).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(one)

    assert statuses == [200] * 50
    assert up.oauth.calls == calls + 1
    tokens = {request.headers["authorization"] for request in up.vertex.requests}
    assert len(tokens) == 1
    assert all(up.oauth.valid(token.removeprefix("Bearer ")) for token in tokens)


def test_a_revoked_token_is_refreshed_and_the_request_retried(up: Upstreams) -> None:
    assert generate(up.gateway).status_code == 200
    calls = up.oauth.calls
    up.oauth.revoke_all()
    up.vertex.reset()
    response = generate(up.gateway)
    assert response.status_code == 200, response.text
    assert up.oauth.calls == calls + 1
    first, second = (request.headers["authorization"] for request in up.vertex.requests)
    assert first != second


def test_a_refused_token_refresh_is_an_upstream_auth_error(up: Upstreams) -> None:
    assert generate(up.gateway).status_code == 200
    up.oauth.revoke_all()
    up.oauth.refuse_with = "invalid_grant"
    started = time.monotonic()
    response = generate(up.gateway)
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["code"], error["provider_code"]) == (AUTH, "token_refresh_failed")
    assert "invalid_grant" in error["message"]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [], "parameters": {"sampleCount": 1}},
        {"instances": [{"prompt": "a fox"}], "parameters": {"sampleCount": 9}},
        {"instances": [{"prompt": "a fox"}], "parameters": {"aspectRatio": "3:2"}},
        {"instances": [{"prompt": "a fox"}], "parameters": {"sampleSize": 2}},
        {"instances": [{"prompt": "a fox"}], "parameters": {"sampleImageSize": "2K"}},
    ],
)
def test_the_emulator_refuses_malformed_bodies_in_googles_envelope(
    up: Upstreams, body: dict[str, Any]
) -> None:
    url = f"{up.vertex_url}/v1/publishers/google/models/{IMAGEN_3}"
    response = httpx.post(url, json=body, headers={"x-goog-api-key": API_KEY})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"]
