"""An emulator of OpenAI's ``POST /v1/images/generations`` and ``POST /v1/images/edits``: real
HTTP, real images, real errors.

What it does as the real API does (openai-python 3.57 types and docstrings, the spec's error
envelope, ``providers.md`` section A):

- ``Authorization: Bearer`` checked: 401 ``invalid_api_key`` echoing the key masked, as OpenAI does.
- The body checked field by field: types and ranges of every documented field, unknown fields
  refused (``unknown_parameter``), the legacy DALL-E ``response_format`` and ``style`` refused for
  GPT image models, per-model sizes and qualities, retired models 404 ``model_not_found``. Every
  error is the four-key envelope ``{"error": {"message", "type", "param", "code"}}``.
- Answers: real images (Pillow) at 1/64 of the requested edges, in the requested format, with
  ``usage``; ``"stream": true`` answers the spec's ``image_generation.partial_image`` and
  ``image_generation.completed`` events.
- Edits: a ``multipart/form-data`` body (parsed with Starlette's form parser) whose every file is
  checked by its content: ``image`` (or ``image[]``, at most 16) PNG, JPEG or WebP under 50 MB,
  ``mask`` a PNG with alpha of the first image's size; its text fields are converted and checked
  as a generation's, plus ``input_fidelity``. Its stream answers ``image_edit.*`` events. Each
  file is recorded (``RecordedRequest.files``).

Where the real API is not documented (the exact wording of validation messages, the 404 for a
retired model, gpt-image-2.6's sizes) the emulator follows OpenAI's usual style and says so.

Tests control it with plain attributes (``reset()`` between tests): ``latency`` (seconds before
the answer, spread over the events of a stream) and ``fault`` (an ``ErrorReply`` from the helpers
below, a ``StreamError`` or a ``Fault``), or ``fault_for``, which picks each request's fault
from its JSON body (a sequence of answers, a fault per model, random chaos). They read
``requests`` (headers and JSON body of each, and whether the client went away before the answer
was complete), ``wait_received()`` and ``wait_cancelled()``.
Serve it with ``OpenAIEmulator.serve()``: dropping a connection needs its socket, which a
small uvicorn protocol subclass hands over.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from PIL import Image
from uvicorn.protocols.http.h11_impl import H11Protocol

from mesh_images_asgi._core.asgi import Receive, Scope, Send
from tests.support.live import serve

__all__ = [
    "MODELS",
    "RETIRED",
    "ErrorReply",
    "Fault",
    "OpenAIEmulator",
    "RecordedRequest",
    "StreamError",
    "check_body",
    "content_policy_violation",
    "invalid_api_key",
    "moderation_blocked",
    "overloaded",
    "rate_limited",
    "region_not_supported",
    "server_error",
]

PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
_STANDARD_SIZES = frozenset({"auto", "1024x1024", "1536x1024", "1024x1536"})
_QUALITIES = frozenset({"auto", "low", "medium", "high"})
_X_QUALITIES = _QUALITIES | {"xhigh", "max"}
# Output tokens of one 1024x1024 image by quality (image-generation guide); other sizes scale.
_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class _Model:
    free_sizes: bool
    qualities: frozenset[str]


MODELS: dict[str, _Model] = {
    "gpt-image-1-mini": _Model(False, _QUALITIES),
    "gpt-image-1.5": _Model(False, _QUALITIES),
    "chatgpt-image-latest": _Model(False, _QUALITIES),
    "gpt-image-2": _Model(True, _QUALITIES),
    "gpt-image-2-2026-04-21": _Model(True, _QUALITIES),
    "gpt-image-2.5-sunburst": _Model(True, _X_QUALITIES),
    "gpt-image-2.5-sunburst-2026-09-08": _Model(True, _X_QUALITIES),
    "gpt-image-2.5-flare": _Model(True, _X_QUALITIES),
    "gpt-image-2.5-flare-2026-09-08": _Model(True, _X_QUALITIES),
    # Not documented: assumed to follow gpt-image-2.
    "gpt-image-2.6-sunburst": _Model(True, _QUALITIES),
    "gpt-image-2.6-flare": _Model(True, _QUALITIES),
}
RETIRED = frozenset({"gpt-image-1", "dall-e-2", "dall-e-3"})

_ENUMS: dict[str, tuple[str, ...]] = {
    "background": ("transparent", "opaque", "auto"),
    "moderation": ("low", "auto"),
    "output_format": ("png", "jpeg", "webp"),
    "complexity": ("low", "medium", "high"),
}
_INTEGERS = {"n": (1, 10), "output_compression": (0, 100), "partial_images": (0, 3)}
_STRINGS = frozenset({"prompt", "model", "size", "quality", "user", "safety_identifier"})
_LEGACY = frozenset({"response_format", "style"})
_KNOWN = frozenset({*_ENUMS, *_INTEGERS, *_STRINGS, *_LEGACY, "stream"})
_EDIT_ENUMS: dict[str, tuple[str, ...]] = {"input_fidelity": ("high", "low")}
_MAX_EDIT_IMAGES = 16
_MAX_FILE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class ErrorReply:
    """An error answer: status, the ``error`` object, extra headers."""

    status: int
    error: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamError:
    """On a streaming request: the first image's partials, then this ``error`` event instead of
    its completed event."""

    error: dict[str, Any] = field(
        default_factory=lambda: _error_object(
            "The server had an error while processing your request.", "server_error"
        )
    )


class Fault(enum.Enum):
    """Answers no correct server gives."""

    DROP = "close the connection without answering"
    MALFORMED = "200 with a body that is not JSON"
    TRUNCATED = "200 whose Content-Length promises more than is sent, then the connection closes"
    HANG = "never answer (until the client goes away)"
    SLOW_BODY = "a correct 200 whose body trickles in over ``latency`` seconds"
    BAD_BASE64 = "200 with well-formed JSON whose image is cut mid-way through its base64"
    CUT_IMAGE = "200 whose image is cut on a 4-character boundary: valid base64, broken image"


@dataclass(frozen=True)
class RecordedFile:
    """One file of an edit's form, as decoded."""

    part: str
    """The form field it came in (``image``, ``image[]``, ``mask``)."""
    filename: str
    content_type: str
    format: str
    size: tuple[int, int]
    mode: str
    data: bytes = field(repr=False)


@dataclass
class RecordedRequest:
    """One request as received; ``body`` is None when it was not JSON (nor a valid form)."""

    headers: dict[str, str]
    body: Any
    cancelled: bool = False
    """The client went away before the answer was complete."""
    files: list[RecordedFile] = field(default_factory=list)
    """An edit's files, in the order they came."""
    path: str = PATH


def _error_object(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


def _invalid(message: str, param: str | None, code: str | None) -> ErrorReply:
    return ErrorReply(400, _error_object(message, "invalid_request_error", param, code))


def moderation_blocked(stage: str = "input") -> ErrorReply:
    """GPT image models' refusal (image-generation guide)."""
    error = _error_object(
        "Your request was rejected by the safety system. If you believe this is an error, "
        "contact us at help.openai.com and include the request ID req_0123456789abcdef.",
        "image_generation_user_error",
        code="moderation_blocked",
    )
    error["moderation_details"] = {"moderation_stage": stage, "categories": ["violence"]}
    return ErrorReply(400, error)


def content_policy_violation() -> ErrorReply:
    """DALL-E's refusal (one-api issue #737)."""
    return _invalid(
        "Your request was rejected as a result of our safety system. Your prompt may contain "
        "text that is not allowed by our safety system.",
        None,
        "content_policy_violation",
    )


def invalid_api_key(key: str = "sk-proj-abcdefghijklmnopqrstuvwxyz0123") -> ErrorReply:
    """401 echoing the key masked, as OpenAI does."""
    masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:]
    message = (
        f"Incorrect API key provided: {masked}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return ErrorReply(401, _error_object(message, "invalid_request_error", code="invalid_api_key"))


def region_not_supported() -> ErrorReply:
    return ErrorReply(
        403,
        _error_object(
            "Country, region, or territory not supported",
            "request_forbidden",
            code="unsupported_country_region_territory",
        ),
    )


def rate_limited(retry_after: str | None = None, retry_after_ms: str | None = None) -> ErrorReply:
    headers = {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "0"}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    message = "Rate limit reached for images per minute. Please try again later."
    return ErrorReply(429, _error_object(message, "requests", code="rate_limit_exceeded"), headers)


def server_error() -> ErrorReply:
    message = "The server had an error while processing your request. Sorry about that!"
    return ErrorReply(500, _error_object(message, "server_error"))


def overloaded() -> ErrorReply:
    message = "The engine is currently overloaded, please try again later."
    return ErrorReply(503, _error_object(message, "server_error", code="server_is_overloaded"))


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "an array"


def _wrong_type(name: str, expected: str, value: Any) -> ErrorReply:
    message = (
        f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead."
    )
    return _invalid(message, name, "invalid_type")


def _field_problem(name: str, value: Any) -> ErrorReply | None:
    if name in _STRINGS or name in _LEGACY or name in _ENUMS:
        if not isinstance(value, str):
            return _wrong_type(name, "a string", value)
        allowed = _ENUMS.get(name)
        if allowed is not None and value not in allowed:
            listing = ", ".join(f"'{item}'" for item in allowed)
            message = f"Invalid value: '{value}'. Supported values are: {listing}."
            return _invalid(message, name, "invalid_value")
    elif name == "stream":
        if not isinstance(value, bool):
            return _wrong_type(name, "a boolean", value)
    elif not isinstance(value, int) or isinstance(value, bool):
        return _wrong_type(name, "an integer", value)
    else:
        low, high = _INTEGERS[name]
        if value > high:
            message = (
                f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
                f"but got {value} instead."
            )
            return _invalid(message, name, "integer_above_max_value")
        if value < low:
            message = (
                f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
                f"but got {value} instead."
            )
            return _invalid(message, name, "integer_below_min_value")
    return None


def _size_problem(model: _Model, size: str) -> str | None:
    if size in _STANDARD_SIZES:
        return None
    if not model.free_sizes:
        return "Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'"
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        return "Expected 'auto' or WIDTHxHEIGHT"
    w, h = int(width), int(height)
    if w % 16 or h % 16:
        return "Width and height must both be divisible by 16"
    if max(w, h) > 3840 or max(w, h) > 3 * min(w, h):
        return "The longest edge must be at most 3840 and the aspect ratio between 1:3 and 3:1"
    if not 655_360 <= w * h <= 8_294_400:
        return "The total number of pixels must be between 655360 and 8294400"
    return None


def check_body(body: Any, *, edit: bool = False) -> ErrorReply | None:
    """What the real API would reject in a request body (an edit's fields: ``edit``), or None."""
    if not isinstance(body, dict):
        return _invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            None,
            None,
        )
    for name in body:
        if name not in _KNOWN and not (edit and name in _EDIT_ENUMS):
            return _invalid(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    for name, allowed in _EDIT_ENUMS.items():
        if name in body and body[name] not in allowed:
            listing = ", ".join(f"'{item}'" for item in allowed)
            message = f"Invalid value: '{body[name]}'. Supported values are: {listing}."
            return _invalid(message, name, "invalid_value")
    for name in ("prompt", "model"):
        if body.get(name) is None:
            return _invalid(
                f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
            )
    for name, value in body.items():
        skip = value is None or (edit and name in _EDIT_ENUMS)  # checked above
        problem = None if skip else _field_problem(name, value)
        if problem is not None:
            return problem
    if len(body["prompt"]) > 32000:
        message = (
            "Invalid 'prompt': string too long. Expected a string with maximum length 32000, "
            f"but got a string with length {len(body['prompt'])} instead."
        )
        return _invalid(message, "prompt", "string_above_max_length")
    name = body["model"]
    if name in RETIRED:
        error = _error_object(
            f"The model `{name}` does not exist or you do not have access to it.",
            "invalid_request_error",
            code="model_not_found",
        )
        return ErrorReply(404, error)
    model = MODELS.get(name)
    if model is None:
        return _invalid(
            f"Invalid value: '{name}'. Supported values are: {', '.join(MODELS)}.",
            "model",
            "invalid_value",
        )
    for legacy in _LEGACY:
        if body.get(legacy) is not None:
            return _invalid(f"Unknown parameter: '{legacy}'.", legacy, "unknown_parameter")
    size = body.get("size")
    if size is not None and (why := _size_problem(model, size)) is not None:
        return _invalid(f"Invalid size '{size}'. {why}.", "size", "invalid_value")
    quality = body.get("quality")
    if quality is not None and quality not in model.qualities:
        listing = ", ".join(f"'{item}'" for item in sorted(model.qualities))
        return _invalid(
            f"Invalid value: '{quality}'. Supported values are: {listing}.",
            "quality",
            "invalid_value",
        )
    if body.get("background") == "transparent" and body.get("output_format") == "jpeg":
        return _invalid(
            "Transparent background requires output_format 'png' or 'webp'.",
            "background",
            "invalid_value",
        )
    return None


@dataclass(frozen=True)
class _Generation:
    """What a valid request asks for, with OpenAI's defaults applied."""

    prompt: str
    n: int
    size: str
    quality: str
    output_format: str
    background: str
    partial_images: int

    @classmethod
    def of(cls, body: dict[str, Any]) -> _Generation:
        size = body.get("size") or "auto"
        quality = body.get("quality") or "auto"
        return cls(
            prompt=body["prompt"],
            n=body.get("n") or 1,
            size="1024x1024" if size == "auto" else size,
            quality="medium" if quality == "auto" else quality,
            output_format=body.get("output_format") or "png",
            background="transparent" if body.get("background") == "transparent" else "opaque",
            partial_images=body.get("partial_images") or 0,
        )

    def image(self, index: int) -> str:
        """A real image in the requested format, at 1/64 of the requested edges, as base64."""
        width, height = (int(edge) for edge in self.size.split("x"))
        alpha = 0 if self.background == "transparent" else 255
        image = Image.new(
            "RGBA",
            (max(1, width // 64), max(1, height // 64)),
            ((40 * index) % 256, 120, 200, alpha),
        )
        if self.output_format == "jpeg":
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, _PIL_FORMAT[self.output_format])
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def usage(self, images: int) -> dict[str, Any]:
        width, height = (int(edge) for edge in self.size.split("x"))
        per_image = _OUTPUT_TOKENS.get(self.quality, _OUTPUT_TOKENS["high"])
        output = round(per_image * width * height / 1024**2) * images
        text = len(self.prompt.split()) or 1
        return {
            "input_tokens": text,
            "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
            "output_tokens": output,
            "total_tokens": text + output,
            "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        }

    def described(self) -> dict[str, Any]:
        return {
            "background": self.background,
            "output_format": self.output_format,
            "quality": self.quality,
            "size": self.size,
        }


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class OpenAIEmulator:
    """The emulated API as an ASGI app; see the module docstring."""

    def __init__(self, api_key: str = "sk-emulator-0123456789abcdef") -> None:
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.latency = 0.0
        self.fault: ErrorReply | StreamError | Fault | None = None
        self.fault_for: Callable[[Any], ErrorReply | StreamError | Fault | None] | None = None
        self._received = threading.Event()
        self._cancelled = threading.Event()
        self._transports: dict[tuple[str, int], asyncio.Transport] = {}

    def reset(self) -> None:
        """Forget requests and faults; no latency."""
        self.requests.clear()
        self.latency = 0.0
        self.fault = None
        self.fault_for = None
        self._received.clear()
        self._cancelled.clear()

    def wait_received(self, timeout: float = 5.0) -> bool:
        """Block until a request has arrived; False after ``timeout`` seconds."""
        return self._received.wait(timeout)

    def wait_cancelled(self, timeout: float = 5.0) -> bool:
        """Block until a client has gone away mid-request; False after ``timeout`` seconds."""
        return self._cancelled.wait(timeout)

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on 127.0.0.1; yields the OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""
        transports = self._transports

        class Protocol(H11Protocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                if self.client is not None:
                    transports[self.client] = transport

            def connection_lost(self, exc: Exception | None) -> None:
                if self.client is not None:
                    transports.pop(self.client, None)
                super().connection_lost(exc)

        with serve(self, http=Protocol, lifespan="off") as url:
            yield url + "/v1"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] not in (PATH, EDITS_PATH):
            text = f"Invalid URL ({scope['method']} {scope['path']})"
            await _reply(send, ErrorReply(404, _error_object(text, "invalid_request_error")))
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        edit = scope["path"] == EDITS_PATH
        form_problem: ErrorReply | None = None
        body: Any
        files: list[RecordedFile] = []
        if edit:
            parsed = await _read_edit_form(scope, raw)
            if isinstance(parsed, ErrorReply):
                body, form_problem = None, parsed
            else:
                body, files = parsed
        else:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        record = RecordedRequest(headers, body, files=files, path=scope["path"])
        self.requests.append(record)
        self._received.set()
        fault = self.fault if self.fault_for is None else self.fault_for(body)
        if fault in (Fault.HANG, Fault.SLOW_BODY, Fault.BAD_BASE64, Fault.CUT_IMAGE):
            await self._misbehave(fault, body, receive, send, record)
            return
        if isinstance(fault, ErrorReply | Fault):
            if await self._pause(self.latency, receive, record):
                return
            await self._fail(fault, scope, receive, send)
            return
        rejection = self._auth_problem(headers) or form_problem or check_body(body, edit=edit)
        if rejection is not None:
            await _reply(send, rejection)
            return
        generation = _Generation.of(body)
        if body.get("stream"):
            kind = "image_edit" if edit else "image_generation"
            await self._stream(generation, receive, send, record, fault, kind)
            return
        if await self._pause(self.latency, receive, record):
            return
        answer = {
            "created": int(time.time()),
            "data": [{"b64_json": generation.image(index)} for index in range(generation.n)],
            **generation.described(),
            "usage": generation.usage(generation.n),
        }
        await _send(send, 200, json.dumps(answer).encode(), {})

    def _auth_problem(self, headers: dict[str, str]) -> ErrorReply | None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return ErrorReply(401, _error_object(message, "invalid_request_error"))
        return None if key == self.api_key else invalid_api_key(key)

    async def _stream(
        self,
        generation: _Generation,
        receive: Receive,
        send: Send,
        record: RecordedRequest,
        fault: ErrorReply | StreamError | Fault | None,
        kind: str = "image_generation",
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        steps = generation.n * (generation.partial_images + 1)
        for index in range(generation.n):
            for partial in range(generation.partial_images):
                if await self._pause(self.latency / steps, receive, record):
                    return
                event = {
                    "type": f"{kind}.partial_image",
                    "b64_json": generation.image(index),
                    "created_at": int(time.time()),
                    **generation.described(),
                    "partial_image_index": partial,
                }
                await _body(send, _sse(f"{kind}.partial_image", event))
            if await self._pause(self.latency / steps, receive, record):
                return
            if isinstance(fault, StreamError):
                await _body(send, _sse("error", {"error": fault.error}), more=False)
                return
            usage = generation.usage(1)
            del usage["output_tokens_details"]  # the completed event's usage has none (spec)
            event = {
                "type": f"{kind}.completed",
                "b64_json": generation.image(index),
                "created_at": int(time.time()),
                **generation.described(),
                "usage": usage,
            }
            await _body(send, _sse(f"{kind}.completed", event))
        await _body(send, b"", more=False)

    async def _fail(
        self, fault: ErrorReply | Fault, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if isinstance(fault, ErrorReply):
            await _reply(send, fault)
            return
        if fault is Fault.MALFORMED:
            await _send(send, 200, b'{"created": 1713833628, "data": [{"b64_json": "iVBO', {})
            return
        if fault is Fault.TRUNCATED:
            answer = json.dumps({"created": 1713833628, "data": [{"b64_json": "AAAA" * 64}]})
            await _start(send, 200, len(answer), {})
            await _body(send, answer[: len(answer) // 2].encode())
        host, port = scope["client"]
        self._transports[host, port].close()
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _misbehave(
        self, fault: Fault, body: Any, receive: Receive, send: Send, record: RecordedRequest
    ) -> None:
        """The faults that are about time or content, not about the connection."""
        if fault is Fault.HANG:
            await self._pause(float("inf"), receive, record)
            return
        generation = _Generation.of(body)
        image = generation.image(0)
        if fault is Fault.BAD_BASE64:
            image = image[: len(image) // 2 + 1]  # never a whole number of base64 quanta
        if fault is Fault.CUT_IMAGE:
            image = image[: len(image) // 2 // 4 * 4]
        answer = json.dumps({"created": int(time.time()), "data": [{"b64_json": image}]}).encode()
        if fault in (Fault.BAD_BASE64, Fault.CUT_IMAGE):
            await _send(send, 200, answer, {})
            return
        await _start(send, 200, len(answer), {})
        pieces = 10
        step = -(-len(answer) // pieces)
        for start in range(0, len(answer), step):
            if await self._pause(self.latency / pieces, receive, record):
                return
            await _body(send, answer[start : start + step], more=start + step < len(answer))

    async def _pause(self, seconds: float, receive: Receive, record: RecordedRequest) -> bool:
        """Wait ``seconds``; True (and the request recorded as cancelled) if the client left."""
        if seconds <= 0:
            return False
        with anyio.move_on_after(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
            record.cancelled = True
            self._cancelled.set()
        return record.cancelled


async def _body(send: Send, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _start(send: Send, status: int, length: int, headers: dict[str, str]) -> None:
    """The start of a JSON answer of ``length`` bytes."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(length).encode()),
                *((key.encode(), value.encode()) for key, value in headers.items()),
            ],
        }
    )


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    await _start(send, status, len(body), headers)
    await _body(send, body, more=False)


async def _reply(send: Send, reply: ErrorReply) -> None:
    await _send(send, reply.status, json.dumps({"error": reply.error}).encode(), reply.headers)


# Edits: the multipart form ------------------------------------------------------------------


def _form_value(name: str, text: str) -> Any:
    """A form field's text as the JSON value the generation checks expect."""
    if name in _INTEGERS:
        return int(text) if text.lstrip("-").isdigit() else text
    if name == "stream":
        return {"true": True, "false": False}.get(text, text)
    return text


def _decoded(field_name: str, upload: Any, data: bytes) -> RecordedFile | ErrorReply:
    param = "image" if field_name.startswith("image") else field_name
    if len(data) > _MAX_FILE_BYTES:
        return _invalid(f"Invalid '{param}': file larger than 50MB.", param, "file_too_large")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            decoded = RecordedFile(
                field_name,
                upload.filename or "",
                upload.content_type or "",
                str(image.format),
                image.size,
                image.mode,
                data,
            )
    except (OSError, SyntaxError, ValueError):
        return _invalid(
            f"Invalid input image - format must be in ['image/jpeg', 'image/png', "
            f"'image/webp'], got {upload.content_type or 'unknown'}.",
            param,
            "invalid_image_format",
        )
    if decoded.format not in ("PNG", "JPEG", "WEBP"):
        return _invalid(f"Invalid '{param}': unsupported image format.", param, "invalid_value")
    return decoded


async def _read_edit_form(
    scope: Scope, raw: bytes
) -> tuple[dict[str, Any], list[RecordedFile]] | ErrorReply:
    """The fields and files of an edit's ``multipart/form-data`` body, each file checked."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    headers = dict(scope["headers"])
    if not headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
        return _invalid(
            "Invalid Content-Type header, expected multipart/form-data.", None, "invalid_value"
        )
    form = await Request(scope, replay).form(max_files=64, max_fields=64)
    body: dict[str, Any] = {}
    files: list[RecordedFile] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            decoded = _decoded(name, value, await value.read())
            if isinstance(decoded, ErrorReply):
                return decoded
            files.append(decoded)
        else:
            body[name] = _form_value(name, value)
    await form.close()
    problem = _files_problem(files)
    return problem if problem is not None else (body, files)


def _files_problem(files: list[RecordedFile]) -> ErrorReply | None:
    images = [item for item in files if item.part in ("image", "image[]")]
    masks = [item for item in files if item.part == "mask"]
    others = [item for item in files if item not in images and item not in masks]
    if others:
        name = others[0].part
        return _invalid(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    if not images:
        return _invalid(
            "Missing required parameter: 'image'.", "image", "missing_required_parameter"
        )
    if len(images) > _MAX_EDIT_IMAGES:
        return _invalid(
            f"Invalid 'image': array too long. Expected an array with maximum length "
            f"{_MAX_EDIT_IMAGES}, but got an array with length {len(images)} instead.",
            "image",
            "array_above_max_length",
        )
    if len(masks) > 1:
        return _invalid("Invalid 'mask': expected one file.", "mask", "invalid_value")
    if masks:
        mask = masks[0]
        if mask.format != "PNG" or mask.mode not in ("RGBA", "LA", "PA"):
            return _invalid(
                "Invalid 'mask': must be a PNG with an alpha channel.", "mask", "invalid_value"
            )
        if mask.size != images[0].size:
            return _invalid(
                "Invalid 'mask': mask size does not match image size.", "mask", "invalid_value"
            )
    return None


def emulator_fixtures(api_key: str) -> tuple[Any, Any]:
    """A module's two fixtures, to assign as ``served, emulator = emulator_fixtures(KEY)``:
    ``served`` (one emulator on 127.0.0.1 for the module, and its base URL) and ``emulator``
    (that emulator, reset for each test)."""

    @pytest.fixture(scope="module")
    def served() -> Iterator[tuple[OpenAIEmulator, str]]:
        emulator = OpenAIEmulator(api_key=api_key)
        with emulator.serve() as base_url:
            yield emulator, base_url

    @pytest.fixture
    def emulator(served: tuple[OpenAIEmulator, str]) -> OpenAIEmulator:
        served[0].reset()
        return served[0]

    return served, emulator
