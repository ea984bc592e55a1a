"""``ImagesApp`` routes and error paths: every error in the envelope with ``x-request-id``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._core.asgi import Message
from mesh_images_asgi._domain.jobs import GenerationJob, PartialSink, ProviderResult
from tests.helpers import app_client, client_for, decode_item

GEN = "/v1/images/generations"
REQUEST_ID = re.compile(r"^req_[0-9A-HJKMNP-TV-Z]{26}$")


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error", "request_id"}
    assert payload["error"]["code"] == code
    assert isinstance(payload["error"]["message"], str)
    assert payload["error"]["message"]
    assert payload["request_id"] == response.headers["x-request-id"]
    error: dict[str, Any] = payload["error"]
    return error


@pytest.mark.anyio
async def test_generation_returns_data_urls_by_default_and_b64_when_asked() -> None:
    async with app_client() as client:
        as_url = await client.post(
            GEN, json={"model": "local/sketch", "prompt": "fox", "n": 2, "size": "128x64"}
        )
        as_b64 = await client.post(
            GEN,
            json={
                "model": "local/default",
                "prompt": "fox",
                "size": "64x64",
                "output_format": "webp",
                "response_format": "b64_json",
            },
        )
    assert as_url.status_code == 200
    body = as_url.json()
    assert set(body) == {"created", "data", "background", "output_format", "quality", "size"}
    assert [item["url"][:22] for item in body["data"]] == ["data:image/png;base64,"] * 2
    assert decode_item(body["data"][0]).size == (128, 64)
    assert body["size"] == "128x64"
    assert body["output_format"] == "png"
    item = as_b64.json()["data"][0]
    assert set(item) == {"b64_json"}
    assert decode_item(item).format == "WEBP"
    assert REQUEST_ID.match(as_url.headers["x-request-id"])


@pytest.mark.anyio
async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow() -> None:
    async with app_client() as client:
        missing = await client.get("/v1/images/nothing")
        wrong = await client.get(GEN)
        wrong_models = await client.post("/v1/models")
    assert_envelope(missing, 404, "not_found")
    assert_envelope(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    assert_envelope(wrong_models, 405, "method_not_allowed")
    assert wrong_models.headers["allow"] == "GET"


@pytest.mark.anyio
async def test_unknown_model_and_unknown_provider_are_404() -> None:
    async with app_client() as client:
        model = await client.post(GEN, json={"model": "local/nope", "prompt": "x"})
        provider = await client.post(GEN, json={"model": "acme/painter", "prompt": "x"})
    assert assert_envelope(model, 404, "model_not_found")["param"] == "model"
    assert_envelope(provider, 404, "model_not_found")


@pytest.mark.anyio
async def test_known_provider_without_credentials_is_501() -> None:
    async with app_client() as client:
        response = await client.post(GEN, json={"model": "openai/gpt-image-2", "prompt": "x"})
    error = assert_envelope(response, 501, "not_implemented")
    assert "openai" in error["message"]


@pytest.mark.anyio
async def test_invalid_json_is_400() -> None:
    async with app_client() as client:
        response = await client.post(
            GEN, content=b'{"prompt": "x",', headers={"content-type": "application/json"}
        )
        latin = await client.post(
            GEN, content=b'{"prompt": "\xff"}', headers={"content-type": "application/json"}
        )
    assert_envelope(response, 400, "invalid_json")
    assert_envelope(latin, 400, "invalid_json")


@pytest.mark.anyio
async def test_non_json_content_type_and_content_encoding_are_415() -> None:
    async with app_client() as client:
        form = await client.post(GEN, data={"prompt": "x"})
        text = await client.post(GEN, content=b"{}", headers={"content-type": "text/plain"})
        gzip = await client.post(
            GEN,
            content=b"\x1f\x8b",
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        with_charset = await client.post(
            GEN,
            content=json.dumps({"model": "local/sketch", "prompt": "x", "size": "64x64"}),
            headers={"content-type": "application/json; charset=utf-8"},
        )
    assert_envelope(form, 415, "unsupported_media_type")
    assert_envelope(text, 415, "unsupported_media_type")
    assert_envelope(gzip, 415, "unsupported_media_type")
    assert with_charset.status_code == 200


@pytest.mark.anyio
async def test_body_over_the_limit_is_413_declared_or_chunked() -> None:
    big = json.dumps({"prompt": "x" * 2000}).encode()

    async def chunks() -> Any:
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    async with app_client(max_body_bytes=1000) as client:
        declared = await client.post(GEN, content=big, headers={"content-type": "application/json"})
        chunked = await client.post(
            GEN, content=chunks(), headers={"content-type": "application/json"}
        )
    assert_envelope(declared, 413, "request_too_large")
    assert_envelope(chunked, 413, "request_too_large")


@pytest.mark.anyio
async def test_413_is_sent_before_reading_a_declared_oversized_body() -> None:
    async with ImagesApp(Settings(max_body_bytes=10, local_latency=0)) as app:
        received: list[Message] = []
        sent: list[Message] = []

        async def receive() -> Message:
            received.append({"type": "http.request"})
            raise AssertionError("the body must not be read")

        async def send(message: Message) -> None:
            sent.append(message)

        scope = _scope(headers=[(b"content-type", b"application/json"), (b"content-length", b"99")])
        await app(scope, receive, send)
        assert not received
        assert sent[0]["status"] == 413


@pytest.mark.anyio
async def test_client_request_id_is_echoed_when_well_formed() -> None:
    async with app_client() as client:
        echoed = await client.get("/nope", headers={"x-request-id": "trace-123.abc:9"})
        replaced = await client.get("/nope", headers={"x-request-id": "bad id with spaces"})
    assert echoed.headers["x-request-id"] == "trace-123.abc:9"
    assert echoed.json()["request_id"] == "trace-123.abc:9"
    assert REQUEST_ID.match(replaced.headers["x-request-id"])


@pytest.mark.anyio
async def test_models_lists_enabled_image_models_with_capabilities() -> None:
    async with app_client() as client:
        response = await client.get("/v1/models")
        filtered = await client.get("/v1/models", params={"type": "image"})
        other = await client.get("/v1/models", params={"type": "chat"})
    page = response.json()
    assert page["object"] == "list"
    ids = [model["id"] for model in page["data"]]
    assert "local/sketch" in ids
    assert not any(model_id.startswith("openai/") for model_id in ids)  # not configured
    local = next(model for model in page["data"] if model["id"] == "local/sketch")
    assert local["capabilities"]["max_n"] == 10
    assert "webp" in local["capabilities"]["output_formats"]
    assert local["aliases"] == ["local/default"]
    assert filtered.json() == page
    assert other.json()["data"] == []


@pytest.mark.anyio
async def test_healthz() -> None:
    async with app_client() as client:
        response = await client.get("/healthz")
    assert response.json() == {"status": "ok"}
    async with client_for(ImagesApp(Settings())) as c:
        assert (await c.get("/healthz")).status_code == 404  # only the standalone app has it


def _scope(
    path: str = GEN, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers if headers is not None else [(b"content-type", b"application/json")],
    }


@pytest.mark.anyio
async def test_client_that_disconnects_while_sending_its_body_is_dropped_quietly() -> None:
    async with ImagesApp(Settings(local_latency=0)) as app:
        messages: Iterator[Message] = iter(
            [
                {"type": "http.request", "body": b'{"prompt": ', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )
        sent: list[Message] = []

        async def receive() -> Message:
            return next(messages)

        async def send(message: Message) -> None:
            sent.append(message)

        await app(_scope(), receive, send)
        assert sent == []


class _SlowProvider:
    name = "local"

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = False

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        self.started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        raise AssertionError("not reached")

    async def aclose(self) -> None:
        return None


@pytest.mark.anyio
async def test_disconnect_while_generating_cancels_the_upstream_call() -> None:
    provider = _SlowProvider()
    async with ImagesApp(Settings(), providers={"local": provider}) as app:
        body = json.dumps({"model": "local/sketch", "prompt": "x"}).encode()
        sent: list[Message] = []
        first = True

        async def receive() -> Message:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            await provider.started.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        with anyio.fail_after(5):
            await app(_scope(), receive, send)
        assert provider.cancelled
        assert sent == []


class _BrokenProvider(_SlowProvider):
    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        raise RuntimeError("secret internals sk-1234567890abcdef")


@pytest.mark.anyio
async def test_unexpected_failure_is_a_500_envelope_without_internals() -> None:
    async with client_for(ImagesApp(Settings(), providers={"local": _BrokenProvider()})) as c:
        response = await c.post(GEN, json={"model": "local/sketch", "prompt": "x"})
    error = assert_envelope(response, 500, "internal_error")
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert error["message"] == "Internal error."


@pytest.mark.anyio
async def test_upstream_deadline_is_504() -> None:
    async with client_for(
        ImagesApp(Settings(upstream_timeout=0.05), providers={"local": _SlowProvider()})
    ) as c:
        response = await c.post(GEN, json={"model": "local/sketch", "prompt": "x"})
    error = assert_envelope(response, 504, "gateway_timeout")
    assert error["provider_code"] == "provider_timeout"


@pytest.mark.anyio
async def test_lifespan_starts_and_closes_resources() -> None:
    from asgi_lifespan import LifespanManager

    app = ImagesApp(Settings(local_latency=0))
    async with LifespanManager(app):
        assert app._service is not None
        client = app._owned_client
        assert client is not None
        assert not client.is_closed
    assert app._service is None
    assert client.is_closed
