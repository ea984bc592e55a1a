"""The Django view served beside the images API."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse


async def hello(request: HttpRequest) -> JsonResponse:
    """Django's own route: its middleware (security headers, X-Frame-Options) still applies."""
    return JsonResponse({"hello": "from django", "path": request.path})
