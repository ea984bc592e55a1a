"""Upstream providers behind one interface (``base.Provider``), and which of them are enabled."""

from __future__ import annotations

import httpx

from ..config import Settings
from .base import Provider
from .local import LocalProvider

__all__ = ["build_providers"]


def build_providers(settings: Settings, client: httpx.AsyncClient) -> dict[str, Provider]:
    """The providers these settings enable (``local`` always is), sharing one upstream client."""
    providers: dict[str, Provider] = {"local": LocalProvider(latency=settings.local_latency)}
    return providers
