"""The access log: one JSON line per request with the documented fields, never the prompt
(unless opted in, and then redacted), never image data, never a key."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from mesh_images_asgi._access.keys import hash_key, new_key
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi._observe import accesslog
from mesh_images_asgi._observe.redact import RedactingFilter
from tests.support.leaks import WATCH
from tests.support.ops import IMAGE_B64, Scripted, ops_app, result

GEN = "/v1/images/generations"
PROMPT = "a quiet harbour at dawn, painted for the access log test"
SECRET = WATCH.secret("sk-test-0123456789abcdef")
BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{64,}")
GENERATION_FIELDS = [
    "ts",
    "request_id",
    "method",
    "route",
    "status",
    "key",
    "model",
    "requested_model",
    "provider",
    "stream",
    "attempts",
    "fallback",
    "upstream_ms",
    "total_ms",
    "images",
    "bytes",
    "cost_usd",
]


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=accesslog.LOGGER_NAME)
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    records = [r for r in caplog.records if r.name == accesslog.LOGGER_NAME]
    parsed = [json.loads(r.getMessage()) for r in records]
    for record, line in zip(records, parsed, strict=True):
        assert record.__dict__["mesh_images"] == line  # the same fields, for structured handlers
        assert BASE64_RUN.search(record.getMessage()) is None
    return parsed


@pytest.mark.anyio
async def test_one_line_per_generation_with_every_field_and_no_prompt_or_image(
    access: pytest.LogCaptureFixture,
) -> None:
    async with ops_app() as (_, client):
        response = await client.post(
            GEN,
            json={
                "model": "local/sketch",
                "prompt": PROMPT,
                "size": "256x256",
                "response_format": "b64_json",
            },
        )
    assert response.status_code == 200
    (line,) = lines(access)
    assert list(line) == GENERATION_FIELDS
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["method"] == "POST"
    assert line["route"] == GEN
    assert line["status"] == 200
    assert line["key"] is None
    assert line["model"] == line["requested_model"] == "local/sketch"
    assert line["provider"] == "local"
    assert line["stream"] is False
    assert line["attempts"] == 1
    assert line["fallback"] is False
    assert 0 <= line["upstream_ms"] <= line["total_ms"]
    assert line["images"] == 1
    assert line["bytes"] == len(response.content)
    assert line["cost_usd"] == 0.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    message = access.records[-1].getMessage()
    assert PROMPT not in message
    assert response.json()["data"][0]["b64_json"][:40] not in message


@pytest.mark.anyio
async def test_an_error_line_names_the_error_and_a_key_by_its_label_only(
    access: pytest.LogCaptureFixture,
) -> None:
    key = WATCH.secret(new_key())
    keys = [{"hash": hash_key(key), "label": "team-a"}]
    async with ops_app(api_keys=keys) as (_, client):
        response = await client.post(
            GEN,
            json={"model": "local/sketch", "prompt": PROMPT, "size": "3x3"},
            headers={"authorization": f"Bearer {key}"},
        )
    assert response.status_code == 400
    (line,) = lines(access)
    assert line["status"] == 400
    assert line["error"] == "invalid_request"
    assert line["key"] == "team-a"
    assert "model" not in line  # model fields: once the request resolved to a usable model
    message = access.records[-1].getMessage()
    assert key not in message
    assert PROMPT not in message


@pytest.mark.anyio
async def test_a_stream_line_counts_pings_and_the_upstream_tokens(
    access: pytest.LogCaptureFixture,
) -> None:
    usage = Usage(prompt_tokens=7, completion_tokens=272, total_tokens=279)
    openai = Scripted(result(1, usage))
    async with ops_app(openai) as (_, client):
        response = await client.post(
            GEN, json={"model": "openai/gpt-image-2", "prompt": PROMPT, "stream": True}
        )
    (line,) = lines(access)
    assert line["stream"] is True
    assert line["pings"] == response.text.count(": ping")
    assert line["input_tokens"] == 7
    assert line["output_tokens"] == 272
    assert line["bytes"] == len(response.content)
    # gpt-image-2's shipped token prices, $5 and $30 per million: 7 x 5 + 272 x 30 = 8195 / 1e6
    assert line["cost_usd"] == 0.008195
    assert IMAGE_B64 not in access.records[-1].getMessage()


@pytest.mark.anyio
async def test_the_prompt_is_logged_only_when_opted_in_and_then_redacted(
    access: pytest.LogCaptureFixture,
) -> None:
    prompt = f"{PROMPT} with the key {SECRET} " + "and more " * 200
    async with ops_app(log_prompts=True) as (_, client):
        await client.post(GEN, json={"model": "local/sketch", "prompt": prompt, "size": "256x256"})
    (line,) = lines(access)
    assert line["prompt"].startswith(PROMPT)
    assert SECRET not in line["prompt"]
    assert "[redacted]" in line["prompt"]
    assert len(line["prompt"]) == accesslog.PROMPT_CHARS


@pytest.mark.anyio
async def test_probes_and_scrapes_are_not_logged(access: pytest.LogCaptureFixture) -> None:
    async with ops_app() as (_, client):
        await client.get("/healthz")
        await client.get("/metrics")
        await client.get("/v1/models")
    assert [line["route"] for line in lines(access)] == ["/v1/models"]


@pytest.mark.anyio
async def test_nothing_is_built_when_the_access_logger_is_off(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=accesslog.LOGGER_NAME)

    def refuse(*args: Any) -> dict[str, Any]:
        raise AssertionError("the line was built for a disabled logger")

    monkeypatch.setattr(accesslog, "fields", refuse)
    async with ops_app() as (_, client):
        response = await client.post(
            GEN, json={"model": "local/sketch", "prompt": PROMPT, "size": "256x256"}
        )
    assert response.status_code == 200
    assert not [r for r in caplog.records if r.name == accesslog.LOGGER_NAME]


@pytest.mark.anyio
async def test_the_access_logger_carries_its_own_redaction_filter() -> None:
    async with ops_app():
        pass
    access_logger = logging.getLogger(accesslog.LOGGER_NAME)
    assert any(isinstance(f, RedactingFilter) for f in access_logger.filters)
