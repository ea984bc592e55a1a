"""Vertex AI wire formats: the bodies of ``:predict`` (Imagen) and ``:generateContent`` (Gemini
image models), and their answers and errors mapped to ours.

    ours                 Imagen :predict                   Gemini :generateContent
    prompt               instances[0].prompt               contents[0].parts[0].text
    edit: images         (retired with Imagen: 410)        contents[0].parts[1..].inlineData
                                                             {mimeType, data}, in their order
    n                    parameters.sampleCount            generationConfig.candidateCount
    size (WxH, W:H)      parameters.aspectRatio            generationConfig.imageConfig.aspectRatio
      its size tier      parameters.sampleImageSize        generationConfig.imageConfig.imageSize
    size auto / none     (nothing: the model's default, 1:1)
    output_format        parameters.outputOptions          imageConfig.imageOutputOptions
    output_compression     .mimeType / .compressionQuality   .mimeType / .compressionQuality
    seed                 parameters.seed                   generationConfig.seed
    watermark            parameters.addWatermark           -
    images               predictions[].bytesBase64Encoded  candidates[].content.parts[].inlineData
    revised_prompt       predictions[].prompt              -
    usage                - (Imagen reports none)           usageMetadata (token counts)

An edit without a size sends no aspect ratio: Gemini keeps the input image's. A size maps only
through the exact table of the model's catalog entry (``aspect_ratios`` and the
``image_sizes`` tiers of its ``options``); anything else is refused, never rendered at 1:1.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh_images_asgi._core.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    ModelRetired,
    UpstreamAuthError,
)
from mesh_images_asgi._domain.catalog import ModelEntry
from mesh_images_asgi._domain.jobs import GeneratedImage, GenerationJob
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi._observe.redact import redact
from mesh_images_asgi.providers._http import (
    Answer,
    bad_response,
    checked_base64,
    error_for_status,
    retry_after_seconds,
    upstream_error_object,
)
from mesh_images_asgi.providers._retry_after import clamped_delay

__all__ = [
    "PROVIDER",
    "SizeParams",
    "VertexImages",
    "generate_content_body",
    "generate_content_images",
    "google_error",
    "predict_body",
    "predict_images",
    "size_params",
    "size_table",
]

PROVIDER = "Vertex AI"

# Gemini finish / block reasons that mean "refused by a safety or policy filter".
BLOCKED_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)
# What Imagen says in the 400 it answers for a prompt its filters refuse.
_PROMPT_BLOCKED = re.compile(
    r"prompt could not be submitted|response is blocked|responsible ai|sensitive words"
    r"|violates? (?:our|google's) (?:policies|usage)|safety (?:filter|setting)",
    re.IGNORECASE,
)
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)s\s*")
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


@dataclass(frozen=True, slots=True)
class SizeParams:
    """What one exact size means upstream."""

    aspect_ratio: str
    image_size: str | None
    """The size tier (``"1K"``, ``"2K"``...) for models that take one, else None."""


@dataclass(frozen=True, slots=True)
class VertexImages:
    """The images of one answer, their format when Vertex said it, and token usage (Gemini)."""

    images: list[GeneratedImage]
    output_format: str | None
    usage: Usage | None = None


def size_table(entry: ModelEntry) -> dict[str, SizeParams]:
    """Every ``WxH`` the model renders, with its aspect ratio and size tier."""
    return {wxh: SizeParams(*meaning) for wxh, meaning in entry.size_meanings().items()}


def size_params(entry: ModelEntry, size: str | None) -> SizeParams | None:
    """The upstream meaning of a resolved size; None for the model's default (``auto``/none)."""
    if size is None or size == "auto":
        return None
    table = size_table(entry)
    params = table.get(size)
    if params is None:
        raise InvalidRequest(
            f"size {size!r} has no exact aspect ratio on {entry.id}; the sizes that work are: "
            f"{', '.join([*table, 'auto'])}.",
            param="size",
        )
    return params


def _image_fields(job: GenerationJob, *, tier: str, output: str) -> dict[str, Any]:
    """Aspect ratio, size tier and output options, under the names one method gives them."""
    fields: dict[str, Any] = {}
    size = size_params(job.entry, job.size)
    if size is not None:
        fields["aspectRatio"] = size.aspect_ratio
        if size.image_size is not None:
            fields[tier] = size.image_size
    request = job.request
    if request.output_format is not None:
        fields[output] = {"mimeType": f"image/{request.output_format}"}
        if request.output_compression is not None:
            fields[output]["compressionQuality"] = request.output_compression
    return fields


def predict_body(job: GenerationJob) -> dict[str, Any]:
    """The Imagen ``:predict`` body; ``InvalidRequest`` for what Imagen would refuse."""
    request = job.request
    if job.inputs is not None:
        raise ModelRetired(
            f"Image editing on {job.entry.id} (Imagen's :predict edit modes) was retired with "
            "Imagen; use a Gemini image model.",
            param="model",
        )
    if request.seed is not None and request.watermark is not False:
        raise InvalidRequest(
            f'seed needs "watermark": false on {job.entry.id}: Imagen takes no seed while it '
            "adds its SynthID watermark (the default).",
            param="seed",
        )
    # includeRaiReason makes Imagen say why it filtered an image instead of silently dropping it.
    parameters: dict[str, Any] = {
        "sampleCount": request.n,
        "includeRaiReason": True,
        **_image_fields(job, tier="sampleImageSize", output="outputOptions"),
    }
    if request.seed is not None:
        parameters["seed"] = request.seed
    if request.watermark is not None:
        parameters["addWatermark"] = request.watermark
    return {"instances": [{"prompt": request.prompt}], "parameters": parameters}


def generate_content_body(job: GenerationJob) -> dict[str, Any]:
    """The Gemini ``:generateContent`` body asking for images only."""
    request = job.request
    config: dict[str, Any] = {"responseModalities": ["IMAGE"], "candidateCount": request.n}
    image_config = _image_fields(job, tier="imageSize", output="imageOutputOptions")
    if image_config:
        config["imageConfig"] = image_config
    if request.seed is not None:
        config["seed"] = request.seed
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    if job.inputs is not None:
        parts.extend(
            {"inlineData": {"mimeType": image.mime_type, "data": _b64(image.data)}}
            for image in job.inputs.images
        )
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _list_of_objects(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise bad_response(PROVIDER, f"{key!r} is not a list of objects")
    return value


def _format(mime_type: Any) -> str | None:
    return _FORMATS.get(mime_type) if isinstance(mime_type, str) else None


def predict_images(data: Mapping[str, Any]) -> VertexImages:
    """Images of a ``:predict`` answer; predictions its filters removed are left out.

    No image left (all filtered, or no predictions at all) is a ``ContentPolicyViolation``.
    """
    images: list[GeneratedImage] = []
    output_format: str | None = None
    reasons: list[str] = []
    for prediction in _list_of_objects(data, "predictions"):
        encoded = prediction.get("bytesBase64Encoded")
        if isinstance(encoded, str) and encoded:
            prompt = prediction.get("prompt")
            images.append(
                GeneratedImage(
                    b64_json=checked_base64(PROVIDER, encoded),
                    revised_prompt=prompt if isinstance(prompt, str) else None,
                )
            )
            output_format = output_format or _format(prediction.get("mimeType"))
        elif isinstance(prediction.get("raiFilteredReason"), str):
            reasons.append(prediction["raiFilteredReason"])
    if not images:
        why = f": {redact(reasons[0])}" if reasons else "."
        raise ContentPolicyViolation(
            f"{PROVIDER} filtered out every image it generated{why}", provider_code="rai_filtered"
        )
    return VertexImages(images, output_format)


def generate_content_images(data: Mapping[str, Any]) -> VertexImages:
    """Images of a ``:generateContent`` answer (thought images skipped).

    A blocked prompt, or no image left with a safety finish reason, is a
    ``ContentPolicyViolation``; no image for any other reason is a bad response.
    """
    feedback = data.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        reason = str(feedback["blockReason"])
        detail = feedback.get("blockReasonMessage")
        raise ContentPolicyViolation(
            f"{PROVIDER} blocked the prompt ({reason})"
            + (f": {redact(str(detail))}" if detail else "."),
            provider_code=reason,
        )
    images: list[GeneratedImage] = []
    output_format: str | None = None
    finishes: list[tuple[str, str]] = []
    for candidate in _list_of_objects(data, "candidates"):
        content = candidate.get("content")
        parts = _list_of_objects(content, "parts") if isinstance(content, dict) else []
        found = False
        for part in parts:
            inline = part.get("inlineData")
            if part.get("thought") or not isinstance(inline, dict):
                continue
            encoded = inline.get("data")
            if isinstance(encoded, str) and encoded:
                images.append(GeneratedImage(b64_json=checked_base64(PROVIDER, encoded)))
                output_format = output_format or _format(inline.get("mimeType"))
                found = True
        if not found:
            message = candidate.get("finishMessage")
            finishes.append((str(candidate.get("finishReason")), str(message) if message else ""))
    if images:
        return VertexImages(images, output_format, _usage(data.get("usageMetadata")))
    for reason, message in finishes:
        if reason in BLOCKED_REASONS:
            raise ContentPolicyViolation(
                f"{PROVIDER} refused to generate the image ({reason})"
                + (f": {redact(message)}" if message else "."),
                provider_code=reason,
            )
    reason = finishes[0][0] if finishes else "no candidates"
    raise bad_response(PROVIDER, f"it returned no image (finish reason {reason})")


def _usage(metadata: Any) -> Usage | None:
    if not isinstance(metadata, dict):
        return None
    return Usage.of(
        metadata.get("promptTokenCount"),
        metadata.get("candidatesTokenCount"),
        metadata.get("totalTokenCount"),
    )


def _details(error: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    details = error.get("details")
    return [
        detail
        for detail in (details if isinstance(details, list) else [])
        if isinstance(detail, dict) and detail.get("@type") == kind
    ]


def _has_detail(error: Mapping[str, Any], kind: str, *, reason: str) -> bool:
    return any(detail.get("reason") == reason for detail in _details(error, kind))


def _retry_delay(error: Mapping[str, Any]) -> float | None:
    for detail in _details(error, _RETRY_INFO):
        match = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
        if match:
            return clamped_delay(float(match[1]))
    return None


def google_error(response: Answer) -> GatewayError:
    """Our error for a non-2xx Vertex answer in Google's ``{"error": {...}}`` envelope."""
    error = upstream_error_object(response.content)
    if not error:
        text = response.content[:200].decode("utf-8", "replace").strip()
        return error_for_status(PROVIDER, response.status_code, text)
    message = str(error.get("message") or "")
    status = error.get("status") if isinstance(error.get("status"), str) else None
    if _has_detail(error, _ERROR_INFO, reason="API_KEY_INVALID"):
        # Google answers 400, not 401, for a wrong API key.
        return UpstreamAuthError(
            f"{PROVIDER} refused the API key: {message}", provider_code="API_KEY_INVALID"
        )
    if response.status_code == 400 and _PROMPT_BLOCKED.search(message):
        return ContentPolicyViolation(
            f"{PROVIDER} refused the prompt: {message}", provider_code="prompt_blocked"
        )
    retry_after = _retry_delay(error)
    if retry_after is None:
        retry_after = retry_after_seconds(response.headers)
    return error_for_status(
        PROVIDER,
        response.status_code,
        message,
        provider_code=status,
        provider_error=error,
        retry_after=retry_after,
    )
