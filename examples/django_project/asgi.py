"""ASGI entry point: Django's application wrapped by ``ImagesMiddleware``.

``POST /v1/images/generations`` and ``GET /v1/models`` are answered by the middleware before
Django sees the request (Django middleware, auth and CSRF do not run for them); every other
request reaches Django untouched. Django has no lifespan: the middleware answers it, and without
one the upstream client is created on first use and closed when the server's event loop ends.

Run from the repository root::

    uvicorn examples.django_project.asgi:application
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from mesh_images_asgi import ImagesMiddleware, Settings

__all__ = ["application", "create_application"]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")


def create_application(settings: Settings | None = None) -> ImagesMiddleware:
    """Django wrapped by the images middleware (settings from the environment by default)."""
    return ImagesMiddleware(get_asgi_application(), settings)


application = create_application()
