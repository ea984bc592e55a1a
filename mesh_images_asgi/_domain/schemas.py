"""The request schema of ``POST /v1/images/generations``.

The schema checks shape and ranges only (422 when violated); what a particular model can do is
checked against its catalog entry afterwards (400). Validation is strict: ``"2"`` is not ``2`` and
``1`` is not ``true``. Unknown top-level fields are kept in ``model_extra`` for upstreams that
take them.

Whatever the field, known or not, the body is also held to bounds (422 past them): JSON nested at
most ``MAX_DEPTH`` levels, strings (and object keys) of at most ``MAX_STRING_CHARS`` characters
except image inputs (bounded by the body size), no control characters other than tab, newline
and carriage return, and no non-finite numbers (``NaN``, ``Infinity``: they are not JSON, and an
upstream would receive them as ``null``).

``quality`` is a schema value when the contract lists it (``CONTRACT_QUALITIES``) or a catalog
entry adds it; the service checks the second half, since only it knows the catalog.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from itertools import islice
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mesh_images_asgi._core.errors import GatewayError, InvalidJSON, ValidationFailed

__all__ = [
    "CONTRACT_QUALITIES",
    "MAX_DEPTH",
    "MAX_STRING_CHARS",
    "OPTIONAL_PARAMS",
    "ImageRequest",
    "parse_request",
    "request_from_fields",
    "unknown_quality",
]

MAX_DEPTH = 32
MAX_STRING_CHARS = 65_536
_UNBOUNDED_STRINGS = frozenset({"image"})  # base64 image inputs: only the body limit applies
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

CONTRACT_QUALITIES = frozenset({"low", "medium", "high", "hd", "standard", "auto"})
"""The qualities of the contract; a catalog entry may add more."""

MAX_FALLBACKS = 5
SIZE_PATTERN = r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4}|[1-9][0-9]?:[1-9][0-9]?)$"


class ImageRequest(BaseModel):
    """One image generation request, as the client sent it."""

    model_config = ConfigDict(
        strict=True, extra="allow", protected_namespaces=(), allow_inf_nan=False
    )

    prompt: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    models: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=MAX_FALLBACKS
    )
    """Fallback models, tried in order when ``model`` fails transiently (as in Mesh's chat API);
    they replace the model's configured fallbacks. Without ``model``, the first one is primary."""
    n: int = Field(default=1, ge=1, le=10)
    size: str | None = Field(default=None, pattern=SIZE_PATTERN)
    quality: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)
    seed: int | None = Field(default=None, ge=-1, le=2147483647)
    user: str | None = Field(default=None, max_length=256)
    """OpenAI's end-user id; like ``safety_identifier``, every model takes it: it goes upstream
    where the upstream knows it (OpenAI) and is dropped where it does not (docs/providers.md)."""
    safety_identifier: str | None = Field(default=None, max_length=256)
    """OpenAI's replacement for ``user``: a stable, hashed end-user id for abuse monitoring."""
    stream: bool = False
    # Fields of the Mesh API reference and SDK that only some providers take.
    aspect_ratio: str | None = Field(default=None, pattern=r"^[1-9][0-9]?:[1-9][0-9]?$")
    resolution: str | None = Field(default=None, max_length=16)
    image: str | list[str] | None = None
    sequential_image_generation: Literal["auto", "disabled"] | None = None
    sequential_image_generation_options: dict[str, Any] | None = None
    guidance_scale: float | None = Field(default=None, ge=1, le=10)
    watermark: bool | None = None
    optimize_prompt_options: dict[str, Any] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must contain non-whitespace text")
        return value

    def extra_fields(self) -> dict[str, Any]:
        """Top-level fields the schema does not know, as sent."""
        return dict(self.model_extra or {})


# Fields a model must declare in its catalog ``params`` to accept them (when they are set).
OPTIONAL_PARAMS: tuple[str, ...] = (
    "output_compression",
    "background",
    "moderation",
    "partial_images",
    "seed",
    "aspect_ratio",
    "resolution",
    "image",
    "sequential_image_generation",
    "sequential_image_generation_options",
    "guidance_scale",
    "watermark",
    "optimize_prompt_options",
)


def unknown_quality(quality: str) -> ValidationFailed:
    """The 422 for a ``quality`` neither the contract nor any catalog entry knows."""
    msg = f"Input should be one of: {', '.join(sorted(CONTRACT_QUALITIES))} (or a catalog value)"
    return ValidationFailed(
        "Request validation failed.",
        details=[{"loc": ["body", "quality"], "msg": msg, "type": "enum"}],
    )


def parse_request(body: bytes) -> ImageRequest:
    """Parse and validate a request body: 400 ``invalid_json`` or 422 ``validation_error``."""
    try:
        request = ImageRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_failed(exc) from None
    if _may_break_bounds(body):
        _check_bounds(request)
    return request


def request_from_fields(fields: dict[str, Any]) -> ImageRequest:
    """Validate fields already decoded (an edit's JSON or form fields): 422 when they fail."""
    try:
        request = ImageRequest.model_validate(fields)
    except ValidationError as exc:
        raise _validation_failed(exc) from None
    _check_bounds(request)
    return request


def _validation_failed(exc: ValidationError) -> GatewayError:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(error["type"] == "json_invalid" for error in errors):
        return InvalidJSON("Request body is not valid JSON.")
    details = [
        {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in errors
    ]
    return ValidationFailed("Request validation failed.", details=details)


def _check_bounds(request: ImageRequest) -> None:
    fields = {name: getattr(request, name) for name in ImageRequest.model_fields}
    problems = _bound_problems({**fields, **request.extra_fields()}, ["body"], 1)
    details = list(islice(problems, 20))
    if details:
        raise ValidationFailed("Request validation failed.", details=details)


# How a control character can appear in JSON text: escaped (\u00XX, \b, \f) or, for DEL, raw.
_CONTROL_MARKERS = (b"\\u", b"\\b", b"\\f", b"\x7f")
# How a non-finite number can: NaN, Infinity, or a literal too large for a float (1e400, or
# more than 300 digits).
_NON_FINITE = re.compile(rb"NaN|Infinity|[eE]\+?[0-9]{3}|[0-9.]{300}")


def _may_break_bounds(body: bytes) -> bool:
    """False when no part of ``body`` can break a bound, so the walk below is not needed: no
    string longer than the body, no nesting deeper than its brackets, no control character
    without its escape, no non-finite number without its spelling. Most requests take this fast
    path."""
    return (
        len(body) > MAX_STRING_CHARS
        or body.count(b"{") + body.count(b"[") > MAX_DEPTH
        or any(marker in body for marker in _CONTROL_MARKERS)
        or _NON_FINITE.search(body) is not None
    )


def _string_problems(value: str, loc: list[Any]) -> Iterator[dict[str, Any]]:
    if len(value) > MAX_STRING_CHARS and loc[1] not in _UNBOUNDED_STRINGS:
        msg = f"String should have at most {MAX_STRING_CHARS} characters"
        yield {"loc": loc, "msg": msg, "type": "string_too_long"}
    if _CONTROL.search(value):
        msg = "Control characters other than tab, newline and carriage return are not allowed"
        yield {"loc": loc, "msg": msg, "type": "control_character"}


def _bound_problems(value: Any, loc: list[Any], depth: int) -> Iterator[dict[str, Any]]:
    """Bounds every part of the body must keep, whatever its field; ``depth`` counts containers."""
    if isinstance(value, str):
        yield from _string_problems(value, loc)
        return
    if isinstance(value, float) and not math.isfinite(value):
        msg = "Input should be a finite number"
        yield {"loc": loc, "msg": msg, "type": "finite_number"}
        return
    if not isinstance(value, dict | list):
        return
    if depth > MAX_DEPTH:
        msg = f"JSON should be nested at most {MAX_DEPTH} levels deep"
        yield {"loc": loc, "msg": msg, "type": "too_deep"}
        return
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str):
            yield from _string_problems(key, [*loc, key])
        yield from _bound_problems(item, [*loc, key], depth + 1)
