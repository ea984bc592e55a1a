"""mesh-images-asgi: an OpenAI-compatible ``POST /v1/images/generations`` for any ASGI service."""

from __future__ import annotations

from ._version import __version__ as __version__
from .app import ImagesApp
from .config import Settings
from .middleware import ImagesMiddleware
from .playground import PlaygroundApp

__all__ = ["ImagesApp", "ImagesMiddleware", "PlaygroundApp", "Settings"]
