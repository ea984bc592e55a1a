"""Vertex AI's ``:predict`` (Imagen) and ``:generateContent`` (Gemini image models), emulated.

Requests are checked the way Vertex checks them: the credentials (a Bearer token the OAuth
emulator issued and that has not expired, or the API key), the URL (project, location, a known
publisher model and the method it serves) and the body (shape, field names, enumerations, ranges).
Failures come back in Google's envelope ``{"error": {"code", "message", "status", "details"}}``.
Input images (edits) are ``inlineData`` parts beside the text: each must say an image MIME type
that its base64 data really decodes as, within the model's count of input images; they are
recorded on the ``Call``. Answers carry real, decodable tiny images (Pillow) in the requested
MIME type, with the aspect ratio that was asked for (16:9 -> 128x72).

Every request is recorded (``requests``). Tests script what comes next:

    emulator.inject_error("resource_exhausted")   # any of DOCUMENTED_ERRORS, ``times`` in a row
    emulator.filter_images(1)                     # Imagen drops the first image(s) (RAI filter)
    emulator.block_candidates("IMAGE_SAFETY")     # Gemini finishes without an image
    emulator.block_prompt("PROHIBITED_CONTENT")   # Gemini promptFeedback.blockReason
    emulator.drop_connection()                    # headers, part of the body, then a reset
    emulator.malformed_answer()                   # 200 with a truncated JSON body
    emulator.latency = 0.5                        # seconds before every answer
    emulator.still_serving("imagen-3.0-generate-002")  # a model Google shut down still answers

Models Google shut down (``SHUT_DOWN``) answer 404 NOT_FOUND, as Vertex does.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.emulators.oauth import OAuthEmulator

__all__ = [
    "DOCUMENTED_ERRORS",
    "PROJECT",
    "SHUT_DOWN",
    "Call",
    "InputPart",
    "Recorded",
    "VertexEmulator",
]

PROJECT = "emu-project"
_MODEL_PATH = "/v1/projects/{project}/locations/{location}/publishers/google/models/{target}"
_EXPRESS_PATH = "/v1/publishers/google/models/{target}"

IMAGEN_RATIOS = frozenset({"1:1", "3:4", "4:3", "9:16", "16:9"})
GEMINI_RATIOS = frozenset({*IMAGEN_RATIOS, "2:3", "3:2", "4:5", "5:4", "21:9"})
# Which method each model serves, and the image sizes it takes (None: it takes none).
MODELS: dict[str, tuple[str, frozenset[str] | None]] = {
    "imagen-3.0-generate-002": ("predict", None),
    "imagen-4.0-generate-001": ("predict", frozenset({"1K", "2K"})),
    "imagen-4.0-fast-generate-001": ("predict", None),
    "imagen-4.0-ultra-generate-001": ("predict", frozenset({"1K", "2K"})),
    "gemini-2.5-flash-image": ("generateContent", None),
    "gemini-3-pro-image-preview": ("generateContent", frozenset({"1K", "2K", "4K"})),
    "gemini-3.1-flash-image-preview": ("generateContent", frozenset({"1K", "2K", "4K"})),
    "gemini-3-pro-image": ("generateContent", frozenset({"1K", "2K", "4K"})),
    "gemini-3.1-flash-image": ("generateContent", frozenset({"1K", "2K", "4K"})),
    "gemini-3.1-flash-lite-image": ("generateContent", frozenset({"1K"})),
}
# Ids Google has shut down (2026-12): Vertex answers them 404 NOT_FOUND, as for an unknown model,
# unless a test says this emulated project still has one (``still_serving``).
SHUT_DOWN = frozenset(
    {
        "imagen-3.0-generate-002",
        "imagen-4.0-generate-001",
        "imagen-4.0-fast-generate-001",
        "imagen-4.0-ultra-generate-001",
        "gemini-2.5-flash-image",
        "gemini-3-pro-image-preview",
        "gemini-3.1-flash-image-preview",
    }
)
_PREDICT_PARAMETERS = frozenset(
    {
        "sampleCount",
        "aspectRatio",
        "sampleImageSize",
        "outputOptions",
        "seed",
        "addWatermark",
        "includeRaiReason",
        "includeSafetyAttributes",
        "enhancePrompt",
        "negativePrompt",
        "personGeneration",
        "safetySetting",
        "language",
        "storageUri",
    }
)
_GENERATION_CONFIG = frozenset(
    {"responseModalities", "candidateCount", "imageConfig", "seed", "temperature", "topP"}
)
_IMAGE_CONFIG = frozenset({"aspectRatio", "imageSize", "imageOutputOptions", "personGeneration"})
_MIME_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}

RAI_REASON = (
    "Unable to show generated images. All images were filtered out because they violated "
    "Vertex AI's usage guidelines. You will not be charged for blocked images. Try rephrasing "
    "the prompt. If you think this was an error, send feedback. Support codes: 29310472"
)
_RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}
# name -> (HTTP status, Google status, message, details): errors Vertex documents or was seen
# sending (see the research notes on provider wire formats).
DOCUMENTED_ERRORS: dict[str, tuple[int, str, str, list[dict[str, Any]]]] = {
    "prompt_blocked": (
        400,
        "INVALID_ARGUMENT",
        "Image generation failed with the following error: The prompt could not be submitted. "
        "This prompt contains sensitive words that violate Google's Responsible AI practices. "
        "Try rephrasing the prompt. If you think this was an error, send feedback. "
        "Support codes: 42876398",
        [],
    ),
    "response_blocked": (
        400,
        "INVALID_ARGUMENT",
        "Image generation failed with the following error: The response is blocked, as it may "
        "violate our policies. If you believe this is an error, please send feedback to your "
        "account team. Error Code: 58061214",
        [],
    ),
    "invalid_argument": (400, "INVALID_ARGUMENT", "Request contains an invalid argument.", []),
    "unauthenticated": (
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential.",
        [],
    ),
    "permission_denied": (
        403,
        "PERMISSION_DENIED",
        "Permission 'aiplatform.endpoints.predict' denied on resource "
        f"'//aiplatform.googleapis.com/projects/{PROJECT}' (or it may not exist).",
        [],
    ),
    "not_found": (
        404,
        "NOT_FOUND",
        "Publisher Model was not found or your project does not have access to it.",
        [],
    ),
    "resource_exhausted": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model "
        "with base model: imagen-3.0-generate. Please submit a quota increase request.",
        [_RETRY_INFO],
    ),
    "internal": (500, "INTERNAL", "Internal error encountered.", []),
    "unavailable": (503, "UNAVAILABLE", "The service is currently unavailable.", []),
}


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True, slots=True)
class Call:
    """A request that passed every check: what a scripted answer may look at."""

    model: str
    method: str
    prompt: str
    count: int
    aspect_ratio: str
    mime_type: str
    body: dict[str, Any]
    inputs: tuple[InputPart, ...] = ()
    """The input images (``inlineData`` parts of the request), decoded."""


@dataclass(frozen=True, slots=True)
class InputPart:
    """One input image of a ``:generateContent`` request."""

    mime_type: str
    format: str
    size: tuple[int, int]


Script = Callable[[Call], Response]


def google_error(
    status: int, name: str, message: str, details: list[Any] | None = None
) -> Response:
    """Google's error envelope."""
    error = {"code": status, "message": message, "status": name, "details": details or []}
    return JSONResponse({"error": error}, status_code=status)


def _invalid(message: str) -> Response:
    return google_error(400, "INVALID_ARGUMENT", message)


def tiny_image(prompt: str, index: int, aspect_ratio: str, mime_type: str) -> str:
    """A real image, base64: 8 px per unit of the aspect ratio, coloured by prompt and index."""
    width, height = (int(side) * 8 for side in aspect_ratio.split(":"))
    color = hashlib.sha256(f"{prompt}\x00{index}".encode()).digest()[:3]
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), tuple(color)).save(buffer, _MIME_TYPES[mime_type])
    return base64.b64encode(buffer.getvalue()).decode()


class _Dropped(Response):
    """Headers and part of the body, then the connection is reset."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"predictions": [', "more_body": True})
        raise ConnectionResetError("dropped by the test")


class VertexEmulator:
    """The two methods for ``PROJECT``; give ``oauth`` (token mode) or ``api_key`` (express)."""

    def __init__(self, *, oauth: OAuthEmulator | None = None, api_key: str | None = None) -> None:
        self.oauth = oauth
        self.api_key = api_key
        self.latency = 0.0
        self.requests: list[Recorded] = []
        self.shut_down = set(SHUT_DOWN)
        self.calls: list[Call] = []
        """The requests that passed every check, as checked (input images decoded)."""
        self._script: deque[Script] = deque()
        self._era = 0
        """Counts ``reset``s: a request that outlives its test must not touch the next one's."""
        self.app = Starlette(
            routes=[
                Route(_MODEL_PATH, self._handle, methods=["POST"]),
                Route(_EXPRESS_PATH, self._handle, methods=["POST"]),
            ]
        )

    def reset(self) -> None:
        """Forget recorded requests, scripted answers and latency (``shut_down`` is a setting,
        like ``api_key``: it stays)."""
        self.requests.clear()
        self.calls.clear()
        self._script.clear()
        self.latency = 0.0
        self._era += 1

    def still_serving(self, model: str) -> None:
        """This project still has ``model`` although Google shut it down."""
        self.shut_down.discard(model)

    def inject_error(self, name: str, *, times: int = 1) -> None:
        """Answer the next ``times`` requests with one of ``DOCUMENTED_ERRORS``."""
        status, google_status, message, details = DOCUMENTED_ERRORS[name]
        for _ in range(times):
            self._script.append(lambda call: google_error(status, google_status, message, details))

    def filter_images(self, count: int) -> None:
        """The next ``:predict`` loses its first ``count`` images to the RAI filter."""
        self._script.append(lambda call: self._predictions(call, filtered=count))

    def block_candidates(self, finish_reason: str) -> None:
        """The next ``:generateContent`` finishes with ``finish_reason`` and no image."""
        candidate = {
            "index": 0,
            "finishReason": finish_reason,
            "finishMessage": "Unable to show the generated image. Support codes: 1234",
        }
        self._script.append(lambda call: JSONResponse({"candidates": [candidate]}))

    def block_prompt(self, block_reason: str) -> None:
        """The next ``:generateContent`` refuses the prompt (``promptFeedback.blockReason``)."""
        feedback = {"blockReason": block_reason, "blockReasonMessage": "The prompt was blocked."}
        self._script.append(lambda call: JSONResponse({"promptFeedback": feedback}))

    def drop_connection(self) -> None:
        self._script.append(lambda call: _Dropped())

    def malformed_answer(self) -> None:
        self._script.append(
            lambda call: Response(b'{"predictions": [{"bytesBase64', media_type="application/json")
        )

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        era = self._era
        if self.latency:
            await anyio.sleep(self.latency)
        if era != self._era:  # its test ended while it slept (a gateway gave up on it): a
            # scripted answer or a recorded call now belongs to the next test
            return google_error(503, "UNAVAILABLE", "The emulator was reset meanwhile.")
        refused = self._check_credentials(request)
        if refused is not None:
            return refused
        project = request.path_params.get("project", PROJECT)
        if project != PROJECT:
            return google_error(403, "PERMISSION_DENIED", f"Project {project!r} is not ours.")
        model, _, method = request.path_params["target"].partition(":")
        if model not in MODELS or model in self.shut_down:
            return google_error(404, "NOT_FOUND", f"Publisher Model {model!r} was not found.")
        if MODELS[model][0] != method:
            return _invalid(f"Model {model} does not support method {method!r}.")
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return _invalid("Invalid Content-Type; expected application/json.")
        if not isinstance(body, dict):
            return _invalid("Invalid JSON payload received.")
        check = self._check_predict if method == "predict" else self._check_generate_content
        call_or_error = check(model, body)
        if isinstance(call_or_error, Response):
            return call_or_error
        self.calls.append(call_or_error)
        if self._script:
            return self._script.popleft()(call_or_error)
        if method == "predict":
            return self._predictions(call_or_error, filtered=0)
        return self._candidates(call_or_error)

    def _check_credentials(self, request: Request) -> Response | None:
        key = request.headers.get("x-goog-api-key")
        if self.api_key is not None and key is not None:
            if key == self.api_key and "project" not in request.path_params:
                return None
            error_info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [error_info],
            )
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ")
        if (
            self.oauth is not None
            and authorization.startswith("Bearer ")
            and self.oauth.valid(token)
        ):
            return None
        status, name, message, _ = DOCUMENTED_ERRORS["unauthenticated"]
        return google_error(status, name, message)

    def _check_predict(self, model: str, body: dict[str, Any]) -> Call | Response:
        instances, parameters = body.get("instances"), body.get("parameters", {})
        unknown = set(body) - {"instances", "parameters"}
        if unknown:
            return _invalid(f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r}.")
        if not (isinstance(instances, list) and len(instances) == 1):
            return _invalid("instances must hold exactly one instance.")
        prompt = instances[0].get("prompt") if isinstance(instances[0], dict) else None
        if not isinstance(prompt, str) or not prompt:
            return _invalid("instances[0].prompt is required.")
        if not isinstance(parameters, dict):
            return _invalid("parameters must be an object.")
        unknown = set(parameters) - _PREDICT_PARAMETERS
        if unknown:
            return _invalid(
                f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r} at "
                "'parameters': Cannot find field."
            )
        count = parameters.get("sampleCount", 4)
        if not isinstance(count, int) or not 1 <= count <= 4:
            return _invalid("sampleCount must be an integer in [1, 4].")
        ratio = parameters.get("aspectRatio", "1:1")
        if ratio not in IMAGEN_RATIOS:
            return _invalid(f"Unsupported aspect ratio {ratio!r}.")
        problem = _check_image_size(model, parameters.get("sampleImageSize"))
        problem = problem or _check_output(parameters.get("outputOptions"))
        if "seed" in parameters and parameters.get("addWatermark", True):
            problem = problem or "Seed is not supported when watermark is enabled."
        if problem:
            return _invalid(problem)
        mime = (parameters.get("outputOptions") or {}).get("mimeType", "image/png")
        return Call(model, "predict", prompt, count, ratio, mime, body)

    def _check_generate_content(self, model: str, body: dict[str, Any]) -> Call | Response:
        contents, config = body.get("contents"), body.get("generationConfig", {})
        if not (isinstance(contents, list) and contents and isinstance(contents[0], dict)):
            return _invalid("contents is required.")
        parts = contents[-1].get("parts") or []
        if not all(isinstance(part, dict) for part in parts):
            return _invalid("Invalid JSON payload received. A part is not an object.")
        texts = [part.get("text") for part in parts if "inlineData" not in part]
        if contents[-1].get("role") != "user" or not texts or not all(texts):
            return _invalid("The last content must be a user turn with text parts.")
        inputs = _input_parts(model, parts)
        if isinstance(inputs, Response):
            return inputs
        if not isinstance(config, dict) or set(config) - _GENERATION_CONFIG:
            return _invalid("Invalid JSON payload received. Unknown name in 'generation_config'.")
        if config.get("responseModalities") != ["IMAGE"]:
            return _invalid('responseModalities must be ["IMAGE"] for this test emulator.')
        count = config.get("candidateCount", 1)
        if not isinstance(count, int) or not 1 <= count <= 8:
            return _invalid("candidateCount must be an integer in [1, 8].")
        image_config = config.get("imageConfig", {})
        if not isinstance(image_config, dict) or set(image_config) - _IMAGE_CONFIG:
            return _invalid("Invalid JSON payload received. Unknown name in 'image_config'.")
        ratio = image_config.get("aspectRatio", "1:1")
        if ratio not in GEMINI_RATIOS:
            return _invalid(f"Unsupported aspect ratio {ratio!r}.")
        problem = _check_image_size(model, image_config.get("imageSize"))
        problem = problem or _check_output(image_config.get("imageOutputOptions"))
        if problem:
            return _invalid(problem)
        mime = (image_config.get("imageOutputOptions") or {}).get("mimeType", "image/png")
        prompt = " ".join(str(text) for text in texts)
        return Call(model, "generateContent", prompt, count, ratio, mime, body, inputs)

    def _predictions(self, call: Call, *, filtered: int) -> Response:
        with_reasons = bool(call.body.get("parameters", {}).get("includeRaiReason"))
        predictions: list[dict[str, Any]] = []
        for index in range(call.count):
            if index < filtered:
                if with_reasons:
                    predictions.append({"raiFilteredReason": RAI_REASON})
                continue
            image = tiny_image(call.prompt, index, call.aspect_ratio, call.mime_type)
            predictions.append(
                {
                    "bytesBase64Encoded": image,
                    "mimeType": call.mime_type,
                    "prompt": f"{call.prompt}, in soft morning light",
                }
            )
        return JSONResponse({"predictions": predictions} if predictions else {})

    def _candidates(self, call: Call) -> Response:
        candidates = []
        for index in range(call.count):
            image = tiny_image(call.prompt, index, call.aspect_ratio, call.mime_type)
            inline = {"inlineData": {"mimeType": call.mime_type, "data": image}}
            # Gemini 3 image models think in images first; those parts are marked "thought".
            thought = {
                "inlineData": {"mimeType": "image/png", "data": "dGhvdWdodA=="},
                "thought": True,
            }
            parts = [thought, inline] if call.model.startswith("gemini-3") else [inline]
            candidates.append(
                {
                    "content": {"role": "model", "parts": parts},
                    "finishReason": "STOP",
                    "index": index,
                }
            )
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 1290 * call.count}
        usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
        return JSONResponse(
            {"candidates": candidates, "usageMetadata": usage, "modelVersion": call.model}
        )


# Input images a request may carry (Gemini image-generation docs: 3 for 2.5 Flash Image, 14 for
# the Gemini 3 image models).
_MAX_INPUTS = {"gemini-2.5-flash-image": 3}
_INPUT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def _input_parts(model: str, parts: list[dict[str, Any]]) -> tuple[InputPart, ...] | Response:
    """The ``inlineData`` parts, each decoded and checked against the MIME type it claims."""
    found: list[InputPart] = []
    for part in parts:
        inline = part.get("inlineData")
        if inline is None:
            continue
        if not isinstance(inline, dict) or set(inline) != {"mimeType", "data"}:
            return _invalid("inlineData must have exactly mimeType and data.")
        expected = _INPUT_TYPES.get(inline["mimeType"])
        if expected is None:
            return _invalid(f"Unsupported MIME type: {inline['mimeType']}.")
        try:
            data = base64.b64decode(inline["data"], validate=True)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                decoded = InputPart(inline["mimeType"], str(image.format), image.size)
        except (ValueError, OSError):
            return _invalid("Unable to process input image. Please retry or report in ...")
        if decoded.format != expected:
            return _invalid(f"The image data is not {inline['mimeType']}.")
        found.append(decoded)
    limit = _MAX_INPUTS.get(model, 14)
    if len(found) > limit:
        return _invalid(f"Too many input images: {len(found)}; {model} accepts up to {limit}.")
    return tuple(found)


def _check_image_size(model: str, size: Any) -> str | None:
    if size is None:
        return None
    accepted = MODELS[model][1]
    if accepted is None:
        return f"Model {model} does not support image size settings."
    if size not in accepted:
        return f"Unsupported image size {size!r}; supported: {', '.join(sorted(accepted))}."
    return None


def _check_output(options: Any) -> str | None:
    if options is None:
        return None
    if not isinstance(options, dict) or options.get("mimeType") not in _MIME_TYPES:
        return "outputOptions.mimeType must be image/png or image/jpeg."
    quality = options.get("compressionQuality")
    if quality is not None and (options["mimeType"] != "image/jpeg" or not 0 <= quality <= 100):
        return "compressionQuality applies to image/jpeg only, from 0 to 100."
    return None
