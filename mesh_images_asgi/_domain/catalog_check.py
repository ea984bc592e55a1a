"""``mesh-images catalog check``: the catalog models whose lifecycle needs attention.

    error    a shutdown date passed but the model is not marked ``retired`` (requests will fail
             upstream); a replacement that is not in the catalog, or is itself retired; a
             ``deprecated`` model without a shutdown date
    warning  a shutdown within 30 days; an alias that names a retired model (its clients get
             410 ``model_retired``, or the replacement under ``replace``); a retired model with no
             replacement

Errors make the command exit non-zero (CI runs it on the shipped catalog); warnings are printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from mesh_images_asgi._domain.catalog import Catalog, ModelEntry

__all__ = ["SOON", "Finding", "check_catalog"]

SOON = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing about one model that needs attention."""

    level: Literal["error", "warning"]
    model: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.model}: {self.message}"


def _entry(catalog: Catalog, entry: ModelEntry, today: date) -> list[Finding]:
    found: list[Finding] = []

    def note(level: Literal["error", "warning"], message: str) -> None:
        found.append(Finding(level, entry.id, message))

    shutdown = entry.shutdown_date
    if entry.status != "retired" and shutdown is not None:
        if shutdown <= today:
            note("error", f"shut down on {shutdown} but marked {entry.status!r}: mark it retired")
        elif shutdown - today <= SOON:
            days = (shutdown - today).days
            note("warning", f"shuts down on {shutdown}, in {days} day(s)")
    if entry.status == "deprecated" and shutdown is None:
        note("error", "deprecated without a shutdown_date")
    if entry.replacement is not None:
        target = catalog.find(entry.replacement)
        if target is None:
            note("error", f"replacement {entry.replacement!r} is not in the catalog")
        elif target.status == "retired":
            note("error", f"replacement {target.id!r} is itself retired")
    elif entry.status == "retired":
        note("warning", "retired with no replacement: its clients can only be refused")
    if entry.status == "retired":
        for alias in entry.aliases:
            note("warning", f"alias {alias!r} names this retired model")
    return found


def check_catalog(catalog: Catalog, today: date) -> list[Finding]:
    """Every finding about ``catalog`` as of ``today``, model by model."""
    return [finding for entry in catalog for finding in _entry(catalog, entry, today)]
