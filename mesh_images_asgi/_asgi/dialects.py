"""Which client is calling, as far as the shape of an answer depends on it.

By default a stream speaks Mesh's ``image.chunk`` events (the seed's format) and ``/v1/models``
answers OpenAI's list and model shapes. Two SDKs expect something else:

- the openai SDK (it sends ``X-Stainless-*`` headers on every request) gets OpenAI's typed image
  stream events (``image_generation.partial_image`` / ``image_generation.completed``);
- the meshapi SDK (it sends ``X-MeshAPI-SDK``) gets Mesh's model list and model shapes (a bare
  JSON list of ``ModelInfo`` objects).

Any client can choose explicitly with ``X-Mesh-Dialect: openai`` or ``X-Mesh-Dialect: mesh``
(case-insensitive; any other value is ignored). The header wins over the SDK headers.
"""

from __future__ import annotations

from typing import Literal

from mesh_images_asgi._core.asgi import Scope, get_header

__all__ = ["DIALECT_HEADER", "Dialect", "model_dialect", "stream_dialect"]

Dialect = Literal["mesh", "openai"]
DIALECT_HEADER = b"x-mesh-dialect"
_STAINLESS = b"x-stainless-"
_MESHAPI_SDK = b"x-meshapi-sdk"


def _explicit(scope: Scope) -> Dialect | None:
    value = (get_header(scope, DIALECT_HEADER) or b"").strip().lower()
    if value == b"openai":
        return "openai"
    if value == b"mesh":
        return "mesh"
    return None


def _has_header(scope: Scope, prefix: bytes) -> bool:
    """A header whose (lower-case, as ASGI sends them) name starts with ``prefix``."""
    return any(name.startswith(prefix) for name, _ in scope.get("headers", ()))


def stream_dialect(scope: Scope) -> Dialect:
    """The stream's event encoding: OpenAI's for the openai SDK, else Mesh's."""
    explicit = _explicit(scope)
    if explicit is not None:
        return explicit
    return "openai" if _has_header(scope, _STAINLESS) else "mesh"


def model_dialect(scope: Scope) -> Dialect:
    """The ``/v1/models`` shapes: Mesh's for the meshapi SDK, else OpenAI's."""
    explicit = _explicit(scope)
    if explicit is not None:
        return explicit
    return "mesh" if _has_header(scope, _MESHAPI_SDK) else "openai"
