"""mesh-images-asgi: an OpenAI-compatible ``POST /v1/images/generations`` for any ASGI service.

The public surface, all of it importable from here:

- the ASGI pieces: ``ImagesApp`` (a pure ASGI app), ``ImagesMiddleware`` (wraps your app),
  ``PlaygroundApp`` (the playground page, to mount), ``Settings`` (configuration), ``Metrics``
  (an app's Prometheus series);
- the provider interface, to serve models of your own (``docs/providers.md``, "Your own
  provider"): ``Provider``, ``GenerationJob``, ``ProviderResult``, ``GeneratedImage``,
  ``PartialImage``, ``PartialSink``, ``Usage``;
- the errors a provider raises: ``GatewayError`` and its ``UpstreamError``,
  ``ContentPolicyViolation``, ``InvalidRequest``.

Everything else lives in private modules (``_asgi``, ``_domain``, ``_routing``, ...) and may
change without notice.
"""

from __future__ import annotations

from mesh_images_asgi._asgi.app import ImagesApp
from mesh_images_asgi._asgi.middleware import ImagesMiddleware
from mesh_images_asgi._asgi.playground import PlaygroundApp
from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    UpstreamError,
)
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialImage,
    PartialSink,
    Provider,
    ProviderResult,
)
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi._observe.metrics import Metrics
from mesh_images_asgi._version import __version__ as __version__

__all__ = [
    "ContentPolicyViolation",
    "GatewayError",
    "GeneratedImage",
    "GenerationJob",
    "ImagesApp",
    "ImagesMiddleware",
    "InvalidRequest",
    "Metrics",
    "PartialImage",
    "PartialSink",
    "PlaygroundApp",
    "Provider",
    "ProviderResult",
    "Settings",
    "UpstreamError",
    "Usage",
]
