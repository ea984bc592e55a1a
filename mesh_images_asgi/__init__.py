"""mesh-images-asgi: an OpenAI-compatible ``POST /v1/images/generations`` for any ASGI service."""

from __future__ import annotations

from .app import ImagesApp
from .config import Settings
from .middleware import ImagesMiddleware

__all__ = ["ImagesApp", "ImagesMiddleware", "Settings"]

__version__ = "0.1.0"
