"""Bring your own key: provider credentials a client sends with its request.

    X-OpenAI-Key          an OpenAI API key, for ``openai/*`` models
    X-Vertex-Credentials  a Google service-account key (its JSON, raw or base64, with an optional
                          ``"region"``) or a Vertex AI API key, for ``vertex/*`` models
    X-Provider-Key        the same, for the provider of the requested (primary) model; the
                          provider's own header wins over it

The credentials are used first; what a provider does when they fail is the router's business
(``_routing/router.py``: the gateway's own credentials, unless ``MESH_IMAGES_BYOK_FALLBACK`` is
off). They
live in the request's ``GenerationJob`` only: never logged, never cached, never in an error.
Here only their envelope is checked (present, not empty, bounded); the provider reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh_images_asgi._core.asgi import Scope
from mesh_images_asgi._core.errors import InvalidRequest

__all__ = ["MAX_CHARS", "PROVIDER_HEADERS", "ClientKeys", "read_client_keys"]

PROVIDER_HEADERS: Mapping[str, str] = {"openai": "X-OpenAI-Key", "vertex": "X-Vertex-Credentials"}
ANY_PROVIDER_HEADER = "X-Provider-Key"
MAX_CHARS = 16_384  # a service-account key is about 2.4 KB, 3.2 KB in base64


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What a request brought: for its primary model's provider, and per provider."""

    any_provider: str | None = field(default=None, repr=False)
    by_provider: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return self.any_provider is not None or bool(self.by_provider)

    def resolve(self, primary_provider: str) -> dict[str, str]:
        """Credentials by provider, ``X-Provider-Key`` given to ``primary_provider``."""
        keys = dict(self.by_provider)
        if self.any_provider is not None:
            keys.setdefault(primary_provider, self.any_provider)
        return keys


_HEADERS: dict[bytes, tuple[str, str | None]] = {
    header.lower().encode(): (header, provider)
    for provider, header in [*PROVIDER_HEADERS.items(), (None, ANY_PROVIDER_HEADER)]
}
"""The lower-case header names we read: their display name and provider (None: any)."""


def _checked(header: str, raw: bytes) -> str:
    value = raw.decode("latin-1").strip()
    if not value or len(value) > MAX_CHARS:
        raise InvalidRequest(
            f"{header} must hold credentials of 1 to {MAX_CHARS} characters.", param=header
        )
    return value


def read_client_keys(scope: Scope) -> ClientKeys:
    """The credentials the request's headers carry (400 ``invalid_request`` when malformed)."""
    any_provider: str | None = None
    by_provider: dict[str, str] = {}
    for key, raw in scope.get("headers", ()):
        found = _HEADERS.get(key)
        if found is None:
            continue
        header, provider = found
        if provider is None:
            if any_provider is None:
                any_provider = _checked(header, raw)
        elif provider not in by_provider:
            by_provider[provider] = _checked(header, raw)
    return ClientKeys(any_provider, by_provider)
