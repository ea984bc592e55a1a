"""The model catalog: which models exist, what each can do, and how to reach it.

The catalog is data. ``_domain/models.toml`` ships in the package; the user's TOML config adds
entries or
overrides fields of shipped ones under ``[models."provider/name"]``. Nothing here knows HTTP.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mesh_images_asgi._core.errors import ModelNotFound

__all__ = [
    "Catalog",
    "EditCapabilities",
    "FreeSize",
    "ModelEntry",
    "PriceTable",
    "Status",
    "load_catalog",
]

Status = Literal["active", "preview", "deprecated", "retired"]
"""A model's lifecycle: ``deprecated`` has a shutdown date and still runs; ``retired`` is off."""

_Price = Annotated[float, Field(ge=0)]
PriceTable = Mapping[str, Mapping[str, _Price]]
"""USD per image by quality, then by size (``{"high": {"1024x1024": 0.133}}``)."""

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*/[A-Za-z0-9][A-Za-z0-9._:@-]*$")
_WXH = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")  # fullmatch: "$" would let "\n" by


def parse_wxh(size: str) -> tuple[int, int] | None:
    """``"1024x768"`` -> ``(1024, 768)``; anything else -> None."""
    match = _WXH.fullmatch(size)
    return (int(match[1]), int(match[2])) if match else None


class FreeSize(BaseModel):
    """Rules for models that take any ``WxH`` within limits (gpt-image-2, the local renderer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    multiple_of: int = Field(default=1, ge=1)
    min_edge: int = Field(default=1, ge=1)
    max_edge: int = Field(ge=1)
    max_ratio: float = Field(default=3.0, ge=1.0)
    min_pixels: int = Field(default=0, ge=0)
    max_pixels: int = Field(ge=1)

    def problem(self, width: int, height: int) -> str | None:
        """Why ``width x height`` is not allowed, or None when it is."""
        if width % self.multiple_of or height % self.multiple_of:
            return f"both edges must be multiples of {self.multiple_of}"
        if min(width, height) < self.min_edge or max(width, height) > self.max_edge:
            return f"each edge must be between {self.min_edge} and {self.max_edge} pixels"
        if max(width, height) / min(width, height) > self.max_ratio:
            return f"the long edge may be at most {self.max_ratio:g} times the short edge"
        if not self.min_pixels <= width * height <= self.max_pixels:
            return f"the total must be between {self.min_pixels} and {self.max_pixels} pixels"
        return None

    def describe(self) -> str:
        return (
            f"any WxH with edges multiple of {self.multiple_of}, "
            f"{self.min_edge}-{self.max_edge} px, ratio at most {self.max_ratio:g}:1, "
            f"{self.min_pixels}-{self.max_pixels} pixels in total"
        )


class EditCapabilities(BaseModel):
    """What a model can do on ``POST /v1/images/edits`` (its entry's ``edits`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operations: tuple[str, ...] = ("edit",)
    """Mesh ``operation`` values it serves (``edit`` is what OpenAI's form asks for)."""
    max_images: int = Field(default=1, ge=1, le=16)
    mask: bool = False
    input_fidelity: bool = False
    sizes: tuple[str, ...] | None = None
    """Output sizes an edit may ask for, when they differ from the model's ``sizes`` (no size:
    the first image's)."""
    max_input_pixels: int = Field(default=16_777_216, ge=1)
    retired: str | None = None
    """Editing was retired upstream: the model to use instead (410 ``model_retired``)."""

    def public(self) -> dict[str, Any]:
        if self.retired is not None:
            return {"retired": True, "replacement": self.retired}
        shown = self.model_dump(exclude={"retired"}, exclude_none=True)
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in shown.items()
        }


class ModelEntry(BaseModel):
    """One model: its provider, upstream id and capabilities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID.pattern)
    provider: str
    upstream: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ("auto",)
    aspect_ratios: Mapping[str, str] = Field(default_factory=dict)
    free_size: FreeSize | None = None
    default_size: str | None = None
    max_n: int = Field(default=1, ge=1, le=10)
    qualities: tuple[str, ...] = ("auto",)
    output_formats: tuple[str, ...] = ("png",)
    params: tuple[str, ...] = ()
    accepts_extra_fields: bool = False
    native_streaming: bool = False
    b64_json_only: bool = False
    """Answer ``b64_json`` whatever ``response_format`` says (Vertex AI, as Mesh does)."""
    max_prompt_chars: int | None = Field(default=None, ge=1)
    status: Status = "active"
    shutdown_date: date | None = None
    """When its provider shuts (or shut) it down; set for ``deprecated`` and ``retired``."""
    replacement: str | None = None
    """The catalog model (id or alias) that takes over from it."""
    source: str = ""
    """Where the id, lifecycle and prices come from (a page, an SDK file), for maintainers."""
    price_per_image: _Price | PriceTable | None = None
    """USD per image: one number, or a table by quality then size (see ``image_price``)."""
    price_per_1m_input_tokens: float | None = Field(default=None, ge=0)
    """USD per million input tokens, for upstreams that report them (``usage.prompt_tokens``)."""
    price_per_1m_output_tokens: float | None = Field(default=None, ge=0)
    """USD per million output tokens (``usage.completion_tokens``); see ``_domain/cost.py``."""
    upstream_timeout: float | None = Field(default=None, gt=0)
    fallbacks: tuple[str, ...] = ()
    """Models (ids or aliases) tried in order when this one fails transiently
    (_routing/router.py)."""
    options: Mapping[str, Any] = Field(default_factory=dict)
    edits: EditCapabilities | None = None
    """What it can do on ``POST /v1/images/edits``; None: it cannot edit."""
    variations: bool = False
    """It serves ``POST /v1/images/variations`` (no shipped model does: DALL-E 2 is retired)."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        if self.id.split("/", 1)[0] != self.provider:
            raise ValueError(
                f"model id {self.id!r} must start with its provider {self.provider!r}/"
            )
        for size in (*self.sizes, *self.aspect_ratios.values()):
            if size != "auto" and parse_wxh(size) is None:
                raise ValueError(f"size {size!r} of {self.id!r} is not 'auto' or WxH")
        return self

    def image_price(self, quality: str | None, size: str | None) -> float | None:
        """USD for one image of ``quality`` and ``size`` (None: not priced for them)."""
        prices = self.price_per_image
        if prices is None or isinstance(prices, int | float):
            return prices
        by_size = prices.get(quality or "auto")
        return None if by_size is None or size is None else by_size.get(size)

    def lifecycle(self) -> dict[str, Any]:
        """The ``lifecycle`` object of ``GET /v1/models``."""
        return {
            "status": self.status,
            "shutdown_date": None if self.shutdown_date is None else self.shutdown_date.isoformat(),
            "replacement": self.replacement,
        }

    def size_meanings(self) -> dict[str, tuple[str, str | None]]:
        """Every ``WxH`` of the aspect-ratio tables -> its aspect ratio and size tier.

        ``aspect_ratios`` renders at ``options.image_size`` (None: the model takes no tier);
        ``options.image_sizes`` adds a table per further tier (Vertex models, see providers.md).
        """
        base = self.options.get("image_size")
        meanings = {wxh: (ratio, base) for ratio, wxh in self.aspect_ratios.items()}
        tiers: Mapping[str, Mapping[str, str]] = self.options.get("image_sizes", {})
        for tier, ratios in tiers.items():
            meanings.update((wxh, (ratio, tier)) for ratio, wxh in ratios.items())
        return meanings

    def resolve_size(self, size: str | None) -> str | None:
        """The concrete size for a request's ``size`` (``"auto"``/None -> the default)."""
        if size is None or size == "auto":
            return self.default_size or (None if size is None else "auto")
        return self.aspect_ratios.get(size, size)

    def public(self, created: int) -> dict[str, Any]:
        """The ``GET /v1/models`` entry (the one rendering of a model as JSON)."""
        capabilities: dict[str, Any] = {
            "sizes": list(self.sizes),
            "aspect_ratios": sorted(self.aspect_ratios),
            "max_n": self.max_n,
            "qualities": list(self.qualities),
            "output_formats": list(self.output_formats),
            "params": list(self.params),
            "native_streaming": self.native_streaming,
        }
        if self.free_size is not None:
            capabilities["free_size"] = self.free_size.model_dump()
        capabilities["edits"] = self.edits.public() if self.edits is not None else None
        capabilities["variations"] = self.variations
        entry: dict[str, Any] = {
            "id": self.id,
            "object": "model",
            "created": created,
            "owned_by": self.provider,
            "type": "image",
            "aliases": list(self.aliases),
            "description": self.description,
            "capabilities": capabilities,
            "lifecycle": self.lifecycle(),
        }
        if isinstance(self.price_per_image, int | float):
            entry["pricing"] = {
                "pricing_unit": "per_image",
                "output_usd_per_unit": self.price_per_image,
            }
        elif self.price_per_image is not None:
            entry["pricing"] = {
                "pricing_unit": "per_image",
                "usd_by_quality_and_size": {q: dict(s) for q, s in self.price_per_image.items()},
            }
        return entry


class Catalog:
    """Model entries by id, with alias lookup."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._names: dict[str, ModelEntry] = {}
        for entry in entries:
            self._entries[entry.id] = entry
        for entry in self._entries.values():
            for name in (entry.id, *entry.aliases):
                other = self._names.get(name)
                if other is not None and other.id != entry.id:
                    raise ValueError(
                        f"model name {name!r} is used by {other.id!r} and {entry.id!r}"
                    )
                self._names[name] = entry
        for entry in self._entries.values():
            for name in entry.fallbacks:
                if self._names.get(name, entry) is entry:
                    raise ValueError(f"fallback {name!r} of {entry.id!r} is not another model")

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, name: str) -> ModelEntry | None:
        """The entry for an id or alias, or None."""
        return self._names.get(name)

    def resolve(self, name: str) -> ModelEntry:
        """The entry for an id or alias; 404 ``model_not_found`` otherwise."""
        entry = self._names.get(name)
        if entry is None:
            raise ModelNotFound(
                f"Model {name!r} does not exist. GET /v1/models lists the models served here.",
                param="model",
            )
        return entry


def _shipped() -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath("models.toml").read_text("utf-8")
    data = tomllib.loads(text)
    models: dict[str, dict[str, Any]] = data["models"]
    _merge_edits(models, data.get("edits", {}))
    return models


def _merge_edits(models: dict[str, dict[str, Any]], edits: Mapping[str, Any]) -> None:
    """Put each ``[edits."name"]`` table (``name`` an id or an alias) into its model's entry."""
    names = {
        name: model_id
        for model_id, fields in models.items()
        for name in (model_id, *fields.get("aliases", ()))
    }
    for name, capabilities in edits.items():
        model_id = names.get(name)
        if model_id is None:
            raise ValueError(f"[edits.{name!r}] names no model of the catalog")
        models[model_id].setdefault("edits", capabilities)


def load_catalog(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Catalog:
    """The shipped catalog with the user's ``[models."id"]`` tables merged over it, by field."""
    raw = _shipped()
    for model_id, fields in (overrides or {}).items():
        raw[model_id] = {**raw.get(model_id, {}), **fields}
    return Catalog(ModelEntry.model_validate({"id": key, **value}) for key, value in raw.items())
