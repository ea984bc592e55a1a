"""Bring your own key: provider credentials a client sends with its request.

    X-OpenAI-Key          an OpenAI API key, for ``openai/*`` models
    X-Vertex-Credentials  a Google service-account key (its JSON, raw or base64, with an optional
                          ``"region"``) or a Vertex AI API key, for ``vertex/*`` models
    X-Provider-Key        the same, for the provider of the requested (primary) model; the
                          provider's own header wins over it

The credentials are used first; what a provider does when they fail is the router's business
(``routing.py``: the gateway's own credentials, unless ``MESH_IMAGES_BYOK_FALLBACK`` is off). They
live in the request's ``GenerationJob`` only: never logged, never cached, never in an error.
Here only their envelope is checked (present, not empty, bounded); the provider reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._asgi import Scope, get_header
from .errors import InvalidRequest

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


def _value(scope: Scope, header: str) -> str | None:
    raw = get_header(scope, header.lower().encode())
    if raw is None:
        return None
    value = raw.decode("latin-1").strip()
    if not value or len(value) > MAX_CHARS:
        raise InvalidRequest(
            f"{header} must hold credentials of 1 to {MAX_CHARS} characters.", param=header
        )
    return value


def read_client_keys(scope: Scope) -> ClientKeys:
    """The credentials the request's headers carry (400 ``invalid_request`` when malformed)."""
    by_provider = {
        provider: value
        for provider, header in PROVIDER_HEADERS.items()
        if (value := _value(scope, header)) is not None
    }
    return ClientKeys(_value(scope, ANY_PROVIDER_HEADER), by_provider)
