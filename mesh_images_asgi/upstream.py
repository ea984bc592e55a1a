"""The one upstream HTTP client a process shares: httpx's API over a fast transport.

httpx's default transport costs 7-15x more per request than aiohttp on the machines we measured
(see docs/benchmarks.md), so by default the client is an ``httpx.AsyncClient`` whose transport is
``httpx_aiohttp.AiohttpTransport``. Users may pass their own ``httpx.AsyncClient`` to ``ImagesApp``
(tests pass one over ``httpx.MockTransport``); the providers only ever see the httpx API.
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

from .config import Settings

__all__ = ["create_upstream_client"]


def create_upstream_client(settings: Settings) -> httpx.AsyncClient:
    """A client with explicit timeouts: short connect, a read long enough for a slow generation."""
    timeout = httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.upstream_timeout,
        write=settings.connect_timeout * 6,
        pool=settings.connect_timeout * 2,
    )
    limits = httpx.Limits(
        max_connections=settings.max_upstream_connections,
        max_keepalive_connections=settings.max_upstream_connections,
        keepalive_expiry=30.0,
    )
    transport = AiohttpTransport(limits=limits)
    return httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
