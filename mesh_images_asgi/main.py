"""The standalone app, for ``uvicorn mesh_images_asgi.main:app``.

Settings come from the environment and ``MESH_IMAGES_CONFIG``; ``/healthz``, ``/readyz``,
``GET /openapi.json``, ``GET /metrics`` (Prometheus) and the playground page (``GET /``) are
served, and CORS is answered for ``MESH_IMAGES_CORS_ORIGINS``.
``create_app`` is the factory form: ``uvicorn --factory mesh_images_asgi.main:create_app``.
"""

from __future__ import annotations

from mesh_images_asgi._asgi.app import ImagesApp
from mesh_images_asgi._config import Settings

__all__ = ["app", "create_app"]


def create_app(settings: Settings | None = None, *, playground: bool = True) -> ImagesApp:
    """A standalone ``ImagesApp`` (with ``/healthz``, ``/readyz``, ``/openapi.json``,
    ``/metrics``, the playground page at ``/`` unless ``playground=False``, and CORS when
    ``MESH_IMAGES_CORS_ORIGINS`` is set)."""
    return ImagesApp(
        settings, health=True, openapi=True, metrics_route=True, cors=True, playground=playground
    )


app = create_app()
