"""``POST /v1/images/edits``: its two request forms, read into one ``ImageRequest`` and its
``EditInputs``.

    multipart/form-data   OpenAI's form (its SDK's ``images.edit``): files ``image`` (or
                          ``image[]``, repeated up to 16 times) and ``mask``; every other field
                          is text, converted to the JSON type the schema expects ("2" -> 2,
                          "true" -> true); a field sent twice is a 422.
    application/json      the Mesh form (``meshapi``'s ``ImageEditParams``): ``image``, ``mask``,
                          ``reference_images`` as data URLs or bare base64 (or ``{"url": ...}``),
                          ``operation``...; OpenAI's JSON form ``images: [{"image_url": ...}]``
                          is taken too (``file_id`` is not: there is no file store here).
                          Remote URLs are refused (as Mesh does): the gateway fetches nothing.

The edit-only fields (``operation``, ``input_fidelity``, ``upscale_factor``, ``expand_factor``)
go into ``EditInputs``; everything else is validated by the same schema as a generation, so an
unknown field is forwarded to OpenAI-compatible upstreams and refused (422) by the others. Images
are decoded and checked by their content (``edit_inputs.check_image``) in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import anyio.to_thread
import orjson

from mesh_images_asgi._asgi.body import check_body_size, read_body
from mesh_images_asgi._asgi.form import FormLimits, FormPart, boundary_of, read_form
from mesh_images_asgi._core.asgi import Receive, Scope, get_header
from mesh_images_asgi._core.errors import (
    InvalidJSON,
    InvalidRequest,
    UnsupportedMediaType,
    ValidationFailed,
)
from mesh_images_asgi._domain.edit_inputs import EditInputs, check_image, decode_image_field
from mesh_images_asgi._domain.schemas import ImageRequest, request_from_fields

__all__ = ["read_edit"]

_EDIT_FIELDS = ("operation", "input_fidelity", "upscale_factor", "expand_factor")
_IMAGE_FIELDS = frozenset({"image", "image[]"})
_INTEGERS = frozenset({"n", "output_compression", "partial_images", "seed"})
_BOOLEANS = frozenset({"stream", "watermark"})
_FLOATS = frozenset({"guidance_scale"})
_BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False}
# Operations whose result the prompt describes; the others may come without one.
_PROMPTED = frozenset({"edit", "outpaint", "mix"})

Decoded = tuple[dict[str, Any], list[tuple[bytes, str]], tuple[bytes, str] | None]
"""The request's fields, its images (bytes and the field they came in) and its mask."""


async def read_edit(
    scope: Scope,
    receive: Receive,
    limits: FormLimits,
    time_limit: float | None,
    *,
    default_prompt: str | None = None,
) -> tuple[ImageRequest, EditInputs]:
    """Read, parse and check an edit request of either form (``default_prompt`` for a request
    that may come without one: a variation)."""
    content_type = get_header(scope, b"content-type") or b""
    media_type = content_type.split(b";", 1)[0].strip().lower()
    check_body_size(scope, limits.max_body_bytes)
    decode: Callable[[], Decoded]
    if media_type == b"multipart/form-data":
        parts = await read_form(receive, boundary_of(content_type), limits, time_limit)
        decode = partial(_from_form, parts)
    elif media_type in (b"", b"application/json"):
        body = await read_body(receive, limits.max_body_bytes, time_limit)
        decode = partial(_from_json, body)
    else:
        shown = content_type.decode("latin-1")[:100]
        raise UnsupportedMediaType(
            "Content-Type must be multipart/form-data (OpenAI's form) or application/json "
            f"(Mesh's), not {shown!r}."
        )
    # Decoding (JSON, base64) and checking images take milliseconds per megabyte: not on the loop.
    return await anyio.to_thread.run_sync(_build, decode, default_prompt)


def _build(
    decode: Callable[[], Decoded], default_prompt: str | None
) -> tuple[ImageRequest, EditInputs]:
    fields, images, mask = decode()
    if not fields.get("prompt") and default_prompt is not None:
        fields["prompt"] = default_prompt
    edit = {name: fields.pop(name) for name in _EDIT_FIELDS if name in fields}
    operation = edit.get("operation", "edit")
    if not isinstance(operation, str):
        raise InvalidRequest("operation must be a string.", param="operation")
    if not fields.get("prompt") and operation not in _PROMPTED:
        fields["prompt"] = operation.replace("_", " ")  # nothing to describe: the operation is
    request = request_from_fields(fields)
    checked = tuple(check_image(data, param) for data, param in images)
    inputs = EditInputs(
        images=checked,
        mask=None if mask is None else check_image(*mask),
        operation=operation,
        input_fidelity=_choice(edit, "input_fidelity", ("high", "low")),
        upscale_factor=_factor(edit, "upscale_factor", 1.0, 8.0),
        expand_factor=_factor(edit, "expand_factor", 1.0, 4.0),
    )
    return request, inputs


def _choice(edit: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = edit.get(name)
    if value is None or value in allowed:
        return value
    raise InvalidRequest(f"{name} must be one of: {', '.join(allowed)}.", param=name)


def _factor(edit: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    """``2``, ``2.5``, ``"2"`` or ``"2x"`` as a number within ``(low, high]``."""
    value = edit.get(name)
    if value is None:
        return None
    try:
        number = float(value.lower().removesuffix("x")) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, int | float) or not low < number <= high:
        raise InvalidRequest(
            f'{name} must be a number above {low:g} and at most {high:g} (such as 2 or "2x").',
            param=name,
        )
    return float(number)


# The multipart form -------------------------------------------------------------------------


def _invalid_field(name: str, msg: str, kind: str) -> ValidationFailed:
    return ValidationFailed(
        "Request validation failed.", details=[{"loc": ["body", name], "msg": msg, "type": kind}]
    )


def _text_value(name: str, text: str) -> Any:
    """A form field's text as the JSON value the schema expects."""
    converters: dict[frozenset[str], tuple[Callable[[str], Any], str]] = {
        _INTEGERS: (int, "an integer"),
        _FLOATS: (float, "a number"),
        _BOOLEANS: (lambda raw: _BOOLEAN_TEXT[raw.strip().lower()], "true or false"),
    }
    for names, (convert, expected) in converters.items():
        if name in names:
            try:
                return convert(text)
            except (KeyError, ValueError):
                raise _invalid_field(name, f"Input should be {expected}", "parsing") from None
    return text


def _from_form(parts: list[FormPart]) -> Decoded:
    fields: dict[str, Any] = {}
    images: list[tuple[bytes, str]] = []
    mask: tuple[bytes, str] | None = None
    for part in parts:
        data = bytes(part.data)
        if part.name in _IMAGE_FIELDS:
            images.append((data if part.is_file else _text_image(data, "image"), "image"))
        elif part.name == "mask":
            if mask is not None:
                raise InvalidRequest("mask was sent twice; an edit takes one mask.", param="mask")
            mask = (data if part.is_file else _text_image(data, "mask"), "mask")
        elif part.is_file:
            raise _invalid_field(part.name, "Input should be a text field, not a file", "type")
        elif part.name in fields:
            raise _invalid_field(part.name, "Field was sent more than once", "duplicate")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid_field(part.name, "Input should be UTF-8 text", "unicode") from None
            fields[part.name] = _text_value(part.name, text)
    return fields, images, mask


def _text_image(data: bytes, param: str) -> bytes:
    """An image sent as a text field: a data URL or base64, as in the JSON form."""
    return decode_image_field(data.decode("latin-1"), param)


# The JSON form ------------------------------------------------------------------------------


def _from_json(body: bytes) -> Decoded:
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJSON("Request body is not valid JSON.") from None
    if not isinstance(fields, dict):
        raise _invalid_field("body", "Input should be a JSON object", "model_type")
    images: list[tuple[bytes, str]] = []
    image, openai_images = fields.pop("image", None), fields.pop("images", None)
    if image is not None and openai_images is not None:
        raise InvalidRequest(
            'Send the images either as "image" (Mesh) or as "images" (OpenAI), not both.',
            param="images",
        )
    for value in _as_list(image):
        images.append((_json_image(value, "image"), "image"))
    for value in _as_list(openai_images):
        images.append((_json_image(value, "images"), "images"))
    for value in _as_list(fields.pop("reference_images", None)):
        images.append((_json_image(value, "reference_images"), "reference_images"))
    raw_mask = fields.pop("mask", None)
    mask = None if raw_mask is None else (_json_image(raw_mask, "mask"), "mask")
    if not images:
        raise InvalidRequest('An edit needs an "image".', param="image")
    return fields, images, mask


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _json_image(value: Any, param: str) -> bytes:
    """One image of the JSON form: a string, ``{"url": ...}`` (Mesh's ``ImageRef``) or
    ``{"image_url": ...}`` (OpenAI's)."""
    if isinstance(value, dict):
        if "file_id" in value:
            raise InvalidRequest(
                f"{param}: file_id is not supported (this gateway keeps no files); send "
                "image_url as a data URL.",
                param=param,
            )
        value = value.get("image_url", value.get("url"))
    if not isinstance(value, str):
        raise InvalidRequest(
            f"{param} must be a data URL or base64 string (or an object with url or image_url).",
            param=param,
        )
    return decode_image_field(value, param)
