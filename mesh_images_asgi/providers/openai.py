"""``openai/*`` models: OpenAI's ``POST /images/generations`` and ``POST /images/edits``, JSON or
natively streamed.

An edit (a job with ``inputs``) goes to ``/images/edits`` as ``multipart/form-data``, as OpenAI
defines it: every input image as ``image`` (``image[]`` when there are several), the mask as
``mask``, and the same fields as a generation's as text (plus ``input_fidelity``); its stream's
events are ``image_edit.partial_image`` and ``image_edit.completed``.

The request carries every field the client set (unknown top-level fields too, untouched) with
``model`` replaced by the catalog entry's ``upstream`` id. ``response_format`` is sent only to
models whose entry sets ``options.upstream_response_format`` (the DALL-E style ones): GPT image
models refuse it and always answer base64.

With ``"stream": true`` *and* ``partial_images`` the upstream is asked to stream and each
``image_generation.partial_image`` event goes to ``on_partial``; otherwise the JSON endpoint is
called (our SSE keep-alive covers a long wait). A refusal by OpenAI's moderation
(``moderation_blocked``, or DALL-E's ``content_policy_violation``) is a content-policy error
carrying the upstream error object; everything else maps through ``_http``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import aclosing
from typing import Any

import httpx
import orjson

from mesh_images_asgi._core.errors import ContentPolicyViolation, GatewayError, UpstreamError
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialImage,
    PartialSink,
    ProviderResult,
)
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi._upstream.client import UpstreamClient, as_upstream_client
from mesh_images_asgi.providers._http import (
    Body,
    bad_response,
    checked_base64,
    error_for_status,
    form_body,
    open_response,
    parse_json_object,
    redact_object,
    retry_after_seconds,
    send_json,
    sse_events,
    upstream_error_object,
)

__all__ = ["OpenAIProvider"]

NAME = "OpenAI"
_POLICY_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
_OPTIONAL = (
    "quality",
    "output_format",
    "output_compression",
    "background",
    "moderation",
    "user",
    "safety_identifier",
)
# The stream's event types by job kind: (partial image, completed image).
_EVENTS = {
    "generation": ("image_generation.partial_image", "image_generation.completed"),
    "edit": ("image_edit.partial_image", "image_edit.completed"),
}


def _payload(job: GenerationJob, *, stream: bool) -> dict[str, Any]:
    """The upstream JSON body for ``job`` (``stream``: ask for partial images)."""
    request = job.request
    payload: dict[str, Any] = {
        **job.extra_fields,
        "model": job.entry.upstream,
        "prompt": request.prompt,
        "n": request.n,
    }
    if job.size is not None:
        payload["size"] = job.size
    for name in _OPTIONAL:
        value = getattr(request, name)
        if value is not None:
            payload[name] = value
    if job.entry.options.get("upstream_response_format"):
        payload["response_format"] = request.response_format
    if stream:
        payload["stream"] = True
        payload["partial_images"] = request.partial_images
    return payload


def _body(job: GenerationJob, *, stream: bool) -> dict[str, Any] | Body:
    """A generation's JSON, or an edit's multipart form: the same fields, and the images."""
    payload = _payload(job, stream=stream)
    inputs = job.inputs
    if inputs is None:
        return payload
    if inputs.input_fidelity is not None:
        payload["input_fidelity"] = inputs.input_fidelity
    fields = {name: _form_text(value) for name, value in payload.items()}
    name = "image[]" if len(inputs.images) > 1 else "image"
    files = [
        (name, (f"image-{index}.{image.format}", image.data, image.mime_type))
        for index, image in enumerate(inputs.images)
    ]
    if inputs.mask is not None:
        files.append(("mask", ("mask.png", inputs.mask.data, inputs.mask.mime_type)))
    return form_body(fields, files)


def _form_text(value: Any) -> str:
    """A JSON field's value as form text: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class OpenAIProvider:
    """The OpenAI Images API (or any upstream speaking it) over the app's upstream client."""

    name = "openai"

    def __init__(
        self,
        client: UpstreamClient | httpx.AsyncClient,
        *,
        api_key: str,
        base_url: str,
        organization: str | None = None,
        project: str | None = None,
    ) -> None:
        self._client = as_upstream_client(client)
        self._urls = {
            "generation": base_url.rstrip("/") + "/images/generations",
            "edit": base_url.rstrip("/") + "/images/edits",
        }
        self._headers = {"authorization": f"Bearer {api_key}"}
        if organization:
            self._headers["openai-organization"] = organization
        if project:
            self._headers["openai-project"] = project

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        request = job.request
        if (
            on_partial is not None
            and request.stream
            and request.partial_images
            and job.entry.native_streaming
        ):
            return await self._stream(job, on_partial)
        url = self._urls[job.kind]
        response = await send_json(
            self._client, NAME, url, _body(job, stream=False), self._auth(job)
        )
        if not response.is_success:
            raise _failure(response.status_code, response.content, response.headers)
        return _result(parse_json_object(NAME, response.content))

    async def _stream(self, job: GenerationJob, on_partial: PartialSink) -> ProviderResult:
        payload = _body(job, stream=True)
        partial_event, completed_event = _EVENTS[job.kind]
        images: list[GeneratedImage] = []
        usage: dict[str, Any] = {}
        last: dict[str, Any] = {}
        headers = self._auth(job)
        url = self._urls[job.kind]
        async with open_response(self._client, NAME, url, payload, headers) as response:
            if not 200 <= response.status_code < 300:
                content = await response.aread()
                raise _failure(response.status_code, content, response.headers)
            async with aclosing(sse_events(NAME, response)) as events:
                async for event in events:
                    if event.data == "[DONE]":
                        break
                    data = parse_json_object(NAME, event.data)
                    error = data.get("error")
                    if isinstance(error, dict):
                        raise _error(None, redact_object(error), {})
                    kind = data.get("type", event.event)
                    if kind == partial_event:
                        index = data.get("partial_image_index")
                        if not isinstance(index, int):
                            raise bad_response(NAME, "a partial image has no index")
                        await on_partial(PartialImage(_b64(data), index))
                    elif kind == completed_event:
                        images.append(GeneratedImage(b64_json=_b64(data)))
                        _add_usage(usage, data.get("usage"))
                        last = data
        if not images:
            raise bad_response(NAME, "the stream ended before an image was complete")
        return ProviderResult(
            images=images,
            created=_int(last.get("created_at")) or int(time.time()),
            output_format=_str(last.get("output_format")),
            background=_str(last.get("background")),
            quality=_str(last.get("quality")),
            size=_str(last.get("size")),
            usage=_usage(usage),
        )

    def _auth(self, job: GenerationJob) -> dict[str, str]:
        """The gateway's headers, or the client's own key alone (our organization and project
        headers would not match its account)."""
        if job.credentials is not None:
            return {"authorization": f"Bearer {job.credentials}"}
        return self._headers

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the app."""


def _failure(status: int, content: bytes, headers: Mapping[str, str]) -> GatewayError:
    return _error(status, upstream_error_object(content), headers)


def _error(status: int | None, error: dict[str, Any], headers: Mapping[str, str]) -> GatewayError:
    """Our error for a (redacted) upstream error object; ``status`` None for a stream's event."""
    code = _str(error.get("code"))
    message = str(error.get("message") or "")
    if code in _POLICY_CODES:
        return ContentPolicyViolation(
            _sentence(f"{NAME} refused the request under its content policy", message),
            provider_code=code,
            provider_error=error,
        )
    if status is None:
        return UpstreamError(
            _sentence(f"{NAME} failed during the generation", message),
            provider_code="internal_provider_error",
            provider_error=error,
        )
    return error_for_status(
        NAME,
        status,
        message,
        provider_code=code,
        provider_error=error or None,
        param=_str(error.get("param")),
        retry_after=retry_after_seconds(headers),
    )


def _sentence(what: str, message: str) -> str:
    return f"{what}: {message}" if message else f"{what}."


def _result(body: dict[str, Any]) -> ProviderResult:
    items = body.get("data")
    if not isinstance(items, list) or not items:
        raise bad_response(NAME, "it holds no images")
    usage = body.get("usage")
    return ProviderResult(
        images=[_image(item) for item in items],
        created=_int(body.get("created")) or int(time.time()),
        output_format=_str(body.get("output_format")),
        background=_str(body.get("background")),
        quality=_str(body.get("quality")),
        size=_str(body.get("size")),
        usage=_usage(usage) if isinstance(usage, dict) else None,
    )


def _image(item: Any) -> GeneratedImage:
    if not isinstance(item, dict):
        raise bad_response(NAME, "an image entry is not an object")
    b64_json, url = _str(item.get("b64_json")), _str(item.get("url"))
    if b64_json is None and url is None:
        raise bad_response(NAME, "an image has neither b64_json nor url")
    return GeneratedImage(
        b64_json=None if b64_json is None else checked_base64(NAME, b64_json),
        url=url,
        revised_prompt=_str(item.get("revised_prompt")),
    )


def _b64(event: dict[str, Any]) -> str:
    b64_json = _str(event.get("b64_json"))
    if b64_json is None:
        raise bad_response(NAME, "an image event has no b64_json")
    return checked_base64(NAME, b64_json)


def _add_usage(total: dict[str, Any], usage: Any) -> None:
    """Add one event's token counts (nested details too) into ``total``."""
    if not isinstance(usage, dict):
        return
    for key, value in usage.items():
        if isinstance(value, dict):
            _add_usage(total.setdefault(key, {}), value)
        elif isinstance(value, int) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def _usage(raw: dict[str, Any]) -> Usage | None:
    """OpenAI's ``input_tokens``/``output_tokens`` as ``prompt_tokens``/``completion_tokens``."""
    details = {
        key: raw[key]
        for key in ("input_tokens_details", "output_tokens_details")
        if isinstance(raw.get(key), dict)
    }
    return Usage.of(
        raw.get("input_tokens"), raw.get("output_tokens"), raw.get("total_tokens"), details
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
