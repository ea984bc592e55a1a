"""Check a schema-valid request against what the chosen model can do.

A mismatch is a 400 ``invalid_request`` naming the field (``param``) and listing what the model
accepts; unknown fields sent to a model whose upstream cannot take them are a 422, like any other
schema violation. Nothing is coerced: a size the model lacks is refused, never mapped to another.
"""

from __future__ import annotations

from .catalog import ModelEntry, parse_wxh
from .errors import InvalidRequest, ValidationFailed
from .schemas import OPTIONAL_PARAMS, ImageRequest

__all__ = ["check_request"]


def _listing(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values) if values else "none"


def check_request(entry: ModelEntry, request: ImageRequest) -> None:
    """Raise ``InvalidRequest`` or ``ValidationFailed`` if ``entry`` cannot serve ``request``."""
    extra = request.extra_fields()
    if extra and not entry.accepts_extra_fields:
        raise ValidationFailed(
            "Request validation failed.",
            details=[
                {
                    "loc": ["body", name],
                    "msg": f"Extra inputs are not permitted for model {entry.id}",
                    "type": "extra_forbidden",
                }
                for name in extra
            ],
        )
    if entry.max_prompt_chars is not None and len(request.prompt) > entry.max_prompt_chars:
        raise InvalidRequest(
            f"prompt is {len(request.prompt)} characters; {entry.id} accepts at most "
            f"{entry.max_prompt_chars}.",
            param="prompt",
        )
    if request.n > entry.max_n:
        raise InvalidRequest(
            f"n={request.n} is more than {entry.id} can generate in one request (at most "
            f"{entry.max_n}).",
            param="n",
        )
    _check_size(entry, request.size)
    if request.quality is not None and request.quality not in entry.qualities:
        raise InvalidRequest(
            f"quality {request.quality!r} is not supported by {entry.id}; it accepts: "
            f"{_listing(entry.qualities)}.",
            param="quality",
        )
    if request.output_format is not None and request.output_format not in entry.output_formats:
        raise InvalidRequest(
            f"output_format {request.output_format!r} is not supported by {entry.id}; it accepts: "
            f"{_listing(entry.output_formats)}.",
            param="output_format",
        )
    for name in OPTIONAL_PARAMS:
        if getattr(request, name) is not None and name not in entry.params:
            raise InvalidRequest(
                f"{name} is not supported by {entry.id}; the optional fields it accepts are: "
                f"{_listing(entry.params)}.",
                param=name,
            )
    _check_combinations(entry, request)


def _check_size(entry: ModelEntry, size: str | None) -> None:
    if size is None or size in entry.sizes or size in entry.aspect_ratios:
        return
    accepted = [*entry.sizes, *entry.aspect_ratios]
    wxh = parse_wxh(size)
    reason = ""
    if wxh is not None and entry.free_size is not None:
        problem = entry.free_size.problem(*wxh)
        if problem is None:
            return
        reason = f" ({problem})"
        accepted.append(entry.free_size.describe())
    raise InvalidRequest(
        f"size {size!r} is not supported by {entry.id}{reason}; it accepts: {_listing(accepted)}.",
        param="size",
    )


def _check_combinations(entry: ModelEntry, request: ImageRequest) -> None:
    output_format = request.output_format or entry.output_formats[0]
    if request.background == "transparent" and output_format == "jpeg":
        raise InvalidRequest(
            "background 'transparent' needs output_format 'png' or 'webp'; jpeg has no alpha.",
            param="background",
        )
    if request.output_compression is not None and output_format == "png":
        raise InvalidRequest(
            "output_compression applies to jpeg and webp output only; set output_format.",
            param="output_compression",
        )
    if request.partial_images and not request.stream:
        raise InvalidRequest(
            'partial_images needs "stream": true; partial images are only sent on a stream.',
            param="partial_images",
        )
