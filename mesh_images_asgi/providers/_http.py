"""What every HTTP upstream shares: one POST (JSON or a multipart form), SSE reading, and the
mapping of failures.

    transport failure before the answer's headers -> 502 upstream_error / connection_error
    transport failure while reading the answer    -> 502 upstream_error / bad_response
    read/write/pool timeout                       -> 504 gateway_timeout / provider_timeout
    non-JSON 2xx body                             -> 502 upstream_error / bad_response
    401, 403                                      -> 502 upstream_auth_error
    429                                           -> 429 upstream_rate_limit_error (+ Retry-After;
                                                     retry_after_seconds None: no upstream hint)
    500, 502, 504 ... / 503, 529                  -> 502 upstream_error / internal_provider_error,
                                                                            provider_overloaded
    404                                           -> 502 upstream_error / model_not_found
    other 4xx                                     -> 400 invalid_request (provider_code, param,
                                                                          provider_error)

Transport failures are mapped where they happen, by the upstream client (``_upstream/client.py``):
the
phase, not the exception class, tells a connect failure from a broken answer.

Providers decide what a 4xx *means* first (a moderation refusal is a content-policy error, not a
bad request) and call ``error_for_status`` for everything else.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from mesh_images_asgi._core.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from mesh_images_asgi._observe.redact import redact
from mesh_images_asgi._observe.tracing import upstream_headers
from mesh_images_asgi._upstream.client import Answer, UpstreamClient, UpstreamResponse, bad_response
from mesh_images_asgi.providers._retry_after import retry_after_seconds
from mesh_images_asgi.providers._whole_image import image_is_whole

__all__ = [
    "Answer",
    "Body",
    "ServerSentEvent",
    "bad_response",
    "checked_base64",
    "error_for_status",
    "form_body",
    "json_body",
    "open_response",
    "parse_json_object",
    "redact_object",
    "retry_after_seconds",
    "send_json",
    "sse_events",
    "upstream_error_object",
]


def checked_base64(provider: str, value: str) -> str:
    """``value`` if it is a whole image in base64; else ``bad_response`` (a truncated image).

    Whole base64 means a whole number of 4-character quanta, with ``=`` padding only at the very
    end; a whole image, that its format's structure is complete (``_whole_image.py``). Only the
    first and last characters are decoded: on a 2 MB image a full decode costs about 4 ms, more
    than the rest of the gateway's work on the answer together.
    """
    size = len(value)
    padding = 2 if value.endswith("==") else 1 if value.endswith("=") else 0
    if not size or size % 4 or value.find("=", 0, size - padding) != -1:  # no copy of the image
        raise bad_response(provider, "an image is not whole base64 (truncated?)")
    if not image_is_whole(value):
        raise bad_response(provider, "an image is cut short (its format's end is missing)")
    return value


def error_for_status(
    provider: str,
    status: int,
    message: str,
    *,
    provider_code: str | None = None,
    provider_error: dict[str, Any] | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> GatewayError:
    """The error for a non-2xx upstream answer that has no provider-specific meaning."""
    text = (
        f"{provider} answered {status}: {redact(message)}"
        if message
        else f"{provider} answered {status}."
    )
    if status in (401, 403):
        return UpstreamAuthError(text, provider_code=provider_code or "authentication_error")
    if status == 429:
        return UpstreamRateLimited(
            text,
            provider_code=provider_code or "rate_limited",
            retry_after_seconds=retry_after,
        )
    if status >= 500:
        overloaded = status in (503, 529)
        code = "provider_overloaded" if overloaded else "internal_provider_error"
        return UpstreamError(text, provider_code=code)
    if status == 404:
        return UpstreamError(text, provider_code="model_not_found")
    return InvalidRequest(
        text, param=param, provider_code=provider_code, provider_error=provider_error
    )


def parse_json_object(provider: str, content: bytes | str) -> dict[str, Any]:
    """A JSON object body, or ``bad_response``."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise bad_response(provider, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise bad_response(provider, "the body is not a JSON object")
    return data


def redact_object(value: Any) -> Any:
    """``value`` (decoded JSON) with every string passed through ``redact``."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_object(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_object(item) for item in value]
    return value


def upstream_error_object(content: bytes) -> dict[str, Any]:
    """The ``error`` object of an error body, credentials redacted; ``{}`` when there is none."""
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return redact_object(error) if isinstance(error, dict) else {}


@dataclass(frozen=True, slots=True)
class Body:
    """A request body and its content type."""

    content: bytes
    content_type: str


def json_body(payload: Mapping[str, Any]) -> Body:
    return Body(orjson.dumps(payload), "application/json")


def form_body(fields: Mapping[str, str], files: list[tuple[str, tuple[str, bytes, str]]]) -> Body:
    """A ``multipart/form-data`` body of text ``fields`` and ``files`` (field name, (file name,
    bytes, content type)), in that order, encoded by httpx's multipart encoder."""
    request = httpx.Request("POST", "http://upstream.invalid/", data=dict(fields), files=files)
    return Body(request.read(), request.headers["content-type"])


@asynccontextmanager
async def open_response(
    client: UpstreamClient,
    provider: str,
    url: str,
    payload: Mapping[str, Any] | Body,
    headers: Mapping[str, str],
) -> AsyncIterator[UpstreamResponse]:
    """POST ``payload`` (JSON, or a ready ``Body``); the response as soon as its headers arrive,
    body unread.

    The response is closed on exit, also when the task is cancelled: closing an unread answer
    drops the connection, which is how the upstream learns that nobody waits for it any more.
    """
    body = payload if isinstance(payload, Body) else json_body(payload)
    async with client.post(provider, url, body.content, _headers(body, headers)) as response:
        yield response


async def send_json(
    client: UpstreamClient,
    provider: str,
    url: str,
    payload: Mapping[str, Any] | Body,
    headers: Mapping[str, str],
) -> Answer:
    """POST ``payload`` (JSON, or a ready ``Body``) and read the whole answer; transport failures
    become our errors."""
    body = payload if isinstance(payload, Body) else json_body(payload)
    return await client.fetch(provider, url, body.content, _headers(body, headers))


def _headers(body: Body, headers: Mapping[str, str]) -> dict[str, str]:
    """A request's headers: its content type, the provider's, and the trace context."""
    return {"content-type": body.content_type, **headers, **upstream_headers()}


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event of a ``text/event-stream``: its ``event:`` name and joined ``data:`` lines."""

    event: str | None
    data: str


async def sse_events(
    provider: str, response: UpstreamResponse
) -> AsyncGenerator[ServerSentEvent, None]:
    """The events of an open streaming response, comments skipped; close it with ``aclosing``."""
    name: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line:
            field, _, value = line.partition(":")
            if field == "event":
                name = value.removeprefix(" ")
            elif field == "data":
                data.append(value.removeprefix(" "))
            continue
        if data:
            yield ServerSentEvent(name, "\n".join(data))
        name, data = None, []
