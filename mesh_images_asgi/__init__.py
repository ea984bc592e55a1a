"""mesh-images-asgi: an OpenAI-compatible ``POST /v1/images/generations`` for any ASGI service."""

from __future__ import annotations

from mesh_images_asgi._asgi.app import ImagesApp
from mesh_images_asgi._asgi.middleware import ImagesMiddleware
from mesh_images_asgi._config import Settings
from mesh_images_asgi._version import __version__ as __version__

__all__ = ["ImagesApp", "ImagesMiddleware", "Settings"]
