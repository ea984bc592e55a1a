"""Model lifecycle at request time: retired models refused, replaced or served; deprecated ones
announced.

``MESH_IMAGES_RETIRED_MODELS`` (``retired_models`` in the TOML file) decides what a request for a
``retired`` catalog model gets:

    refuse   (default)  410 ``model_retired``, naming the replacement and the shutdown date; no
                        upstream call is made
    replace             served by its ``replacement`` (followed while that is retired too), the
                        request's size turned into the size it means there: an Imagen ``1408x768``
                        is 16:9 at 1K, which Gemini 3 renders as ``1376x768``; a size with no
                        counterpart stays a 400 from the replacement's own capability check
    serve               sent to the retired upstream id anyway (for an upstream that still has it)

A ``deprecated`` model is served with ``Deprecation`` (RFC 9745, ``@<unix seconds>``) and
``Sunset`` (RFC 8594, an HTTP-date) response headers, both naming its shutdown date (the catalog
keeps no announcement date, so the model counts as deprecated by then at the latest), and one
warning per model in the access log (``accesslog.warn``). Nothing here knows HTTP beyond those
header values.
"""

from __future__ import annotations

import calendar
from datetime import date
from email.utils import formatdate
from typing import Literal

from mesh_images_asgi._core.errors import GatewayError, ModelRetired
from mesh_images_asgi._domain.capabilities import check_request
from mesh_images_asgi._domain.catalog import Catalog, ModelEntry
from mesh_images_asgi._domain.schemas import ImageRequest
from mesh_images_asgi._observe import accesslog

__all__ = [
    "RetiredPolicy",
    "Warnings",
    "current_model",
    "deprecation_headers",
    "refusal",
    "translate_size",
]

RetiredPolicy = Literal["refuse", "replace", "serve"]
_BASE_TIER = "1K"  # a model that takes no size tier renders its aspect ratios at 1K


def _retired(entry: ModelEntry) -> str:
    when = f" on {entry.shutdown_date.isoformat()}" if entry.shutdown_date else ""
    return f"Model {entry.id!r} was retired: its provider shut it down{when}."


def _replacement(catalog: Catalog, entry: ModelEntry) -> ModelEntry:
    """The first model down ``entry``'s replacement chain that is not retired."""
    seen = {entry.id}
    current = entry
    while True:
        name = current.replacement
        target = catalog.find(name) if name else None
        if target is None:
            missing = f" Its replacement {name!r} is not served here." if name else ""
            raise ModelRetired(f"{_retired(entry)}{missing}", param="model")
        if target.status != "retired":
            return target
        if target.id in seen:
            raise ModelRetired(
                f"{_retired(entry)} Its replacements are all retired.", param="model"
            )
        seen.add(target.id)
        current = target


def refusal(catalog: Catalog, entry: ModelEntry) -> ModelRetired:
    """The 410 for a request naming retired ``entry``: the replacement named when there is one."""
    try:
        target = _replacement(catalog, entry)
    except ModelRetired as error:
        return error
    return ModelRetired(f"{_retired(entry)} Use {target.id!r}, its replacement.", param="model")


def translate_size(source: ModelEntry, target: ModelEntry, size: str | None) -> str | None:
    """``size`` as asked of ``source``, as ``target`` renders the same aspect ratio and tier.

    Sizes of neither table (``auto``, an aspect ratio, a free ``WxH``) pass through unchanged,
    and so does one ``target`` has no counterpart for: its capability check refuses it.
    """
    if size is None:
        return None
    meaning = source.size_meanings().get(size)
    if meaning is None:
        return size
    ratio, tier = meaning
    for wxh, (other_ratio, other_tier) in target.size_meanings().items():
        if other_ratio == ratio and (other_tier or _BASE_TIER) == (tier or _BASE_TIER):
            return wxh
    return size


def current_model(
    catalog: Catalog, entry: ModelEntry, request: ImageRequest, policy: RetiredPolicy
) -> tuple[ModelEntry, ImageRequest]:
    """The model that serves ``request`` for ``entry`` under ``policy``, and the request as that
    model takes it; raises 410 ``model_retired`` (or the replacement's 400) when none can."""
    if entry.status != "retired" or policy == "serve":
        return entry, request
    if policy == "refuse":
        raise refusal(catalog, entry)
    target = _replacement(catalog, entry)
    size = translate_size(entry, target, request.size)
    if size != request.size:
        request = request.model_copy(update={"size": size})
    try:
        check_request(target, request)
    except GatewayError as error:
        error.message = f"{_retired(entry)} Its replacement {target.id!r}: {error.message}"
        raise
    return target, request


def _unix(day: date) -> int:
    return calendar.timegm(day.timetuple())


def deprecation_headers(entry: ModelEntry) -> list[tuple[bytes, bytes]]:
    """``Deprecation`` and ``Sunset`` for a deprecated model with a shutdown date, else none."""
    if entry.status != "deprecated" or entry.shutdown_date is None:
        return []
    seconds = _unix(entry.shutdown_date)
    return [
        (b"deprecation", f"@{seconds}".encode()),
        (b"sunset", formatdate(seconds, usegmt=True).encode()),
    ]


class Warnings:
    """One access-log warning per deprecated model, the first time a request names it."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def requested(self, entry: ModelEntry) -> None:
        if entry.status != "deprecated" or entry.id in self._warned:
            return
        self._warned.add(entry.id)
        accesslog.warn(
            "model_deprecated",
            model=entry.id,
            shutdown_date=entry.shutdown_date.isoformat() if entry.shutdown_date else None,
            replacement=entry.replacement,
            message=f"{entry.id} is deprecated by its provider; move clients to its replacement.",
        )
