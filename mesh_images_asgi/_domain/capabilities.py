"""Check a schema-valid request against what the chosen model can do.

A mismatch is a 400 ``invalid_request`` naming the field (``param``) and listing what the model
accepts; unknown fields sent to a model whose upstream cannot take them are a 422, like any other
schema violation. Nothing is coerced: a size the model lacks is refused, never mapped to another.
"""

from __future__ import annotations

from mesh_images_asgi._core.errors import InvalidRequest, ModelRetired, ValidationFailed
from mesh_images_asgi._domain.catalog import ModelEntry, parse_wxh
from mesh_images_asgi._domain.edit_inputs import EditInputs
from mesh_images_asgi._domain.schemas import OPTIONAL_PARAMS, ImageRequest

__all__ = ["check_edit", "check_request"]


def _listing(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values) if values else "none"


def check_request(
    entry: ModelEntry, request: ImageRequest, inputs: EditInputs | None = None
) -> None:
    """Raise ``InvalidRequest`` or ``ValidationFailed`` if ``entry`` cannot serve ``request``
    (an edit of ``inputs``, when given)."""
    if inputs is not None:
        check_edit(entry, request, inputs)
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


def check_edit(entry: ModelEntry, request: ImageRequest, inputs: EditInputs) -> None:
    """What an edit asks beyond a generation, against the model's ``edits`` capabilities."""
    edits = entry.edits
    if edits is None:
        raise InvalidRequest(
            f"{entry.id} cannot edit images; GET /v1/models shows the models that can "
            "(capabilities.edits).",
            param="model",
        )
    if edits.retired is not None:
        raise ModelRetired(
            f"Image editing on {entry.id} was retired upstream; use {edits.retired} instead.",
            param="model",
        )
    if inputs.operation not in edits.operations:
        raise InvalidRequest(
            f"operation {inputs.operation!r} is not supported by {entry.id}; it accepts: "
            f"{_listing(edits.operations)}.",
            param="operation",
        )
    if len(inputs.images) > edits.max_images:
        raise InvalidRequest(
            f"{len(inputs.images)} images were sent; {entry.id} edits at most "
            f"{edits.max_images} at once.",
            param="image",
        )
    for image in inputs.images:
        if image.width * image.height > edits.max_input_pixels:
            raise InvalidRequest(
                f"An input image is {image.size}; {entry.id} takes at most "
                f"{edits.max_input_pixels} pixels per image.",
                param="image",
            )
    if inputs.mask is not None and not edits.mask:
        raise InvalidRequest(
            f"{entry.id} takes no mask; describe the change in the prompt instead.",
            param="mask",
        )
    if inputs.input_fidelity is not None and not edits.input_fidelity:
        raise InvalidRequest(
            f"input_fidelity is not supported by {entry.id}.", param="input_fidelity"
        )
    if edits.sizes is not None and request.size is not None and request.size not in edits.sizes:
        raise InvalidRequest(
            f"size {request.size!r} is not an edit size of {entry.id}; it accepts: "
            f"{_listing(edits.sizes)}.",
            param="size",
        )
