"""Gateway keys: who may call the gateway, which models, how often, how many images at a time.

A key is configured by its SHA-256 hash only; the key itself is printed once by
``mesh-images keys create`` and stored nowhere on the gateway. A presented key
(``Authorization: Bearer <key>``) is hashed, and the digest is compared with every configured
hash by ``hmac.compare_digest``, without stopping at a match: neither a comparison nor the loop
tells a caller how close a guess came or which key matched.

The matched ``GatewayKey`` is the request's principal: its ``label`` names it in logs and metrics
(never the key or its hash), its ``models`` patterns (``fnmatch``, ``*`` and ``?``) say which
models it may use, ``rpm``/``rpd`` its request limits (see ``ratelimit``), ``max_n`` the most
images one request may ask for, and ``scopes`` what else it may do (``admin``: read metrics).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from mesh_images_asgi._core.asgi import Scope, get_header
from mesh_images_asgi._core.errors import Forbidden, InvalidRequest, Unauthorized
from mesh_images_asgi._domain.catalog import ModelEntry

__all__ = [
    "ADMIN",
    "KEY_PREFIX",
    "GatewayKey",
    "GatewayKeys",
    "KeyRing",
    "KeyScope",
    "allowed_models",
    "authorize",
    "forbidden_model",
    "hash_key",
    "new_key",
    "require_scope",
]

KEY_PREFIX = "mik_"
"""Prefix of the keys ``new_key`` makes (so that scanners and ``redact`` can spot them)."""

KeyScope = Literal["admin"]
"""The scopes a key may hold (``scopes = ["admin"]``)."""
ADMIN: KeyScope = "admin"

_MAX_TOKEN_BYTES = 512
_CHALLENGE = [(b"www-authenticate", b'Bearer realm="mesh-images"')]


def new_key() -> str:
    """A fresh gateway key: the prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The configuration form of ``key``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class GatewayKey(BaseModel):
    """One configured gateway key (a ``[[keys]]`` table, or an item of ``MESH_IMAGES_API_KEYS``)."""

    # A key pasted by mistake (``key = "mik_..."``) must not be echoed by the validation error.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    hash: str = Field(pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")
    """SHA-256 of the key, as ``mesh-images keys create`` prints it (``sha256:<hex>``)."""
    label: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@/-]+$")
    """Who the key belongs to, for logs, metrics and rate-limit counters; unique."""
    models: tuple[str, ...] = ("*",)
    """Patterns of the model ids (or aliases) the key may use; ``*`` is all."""
    rpm: int | None = Field(default=None, ge=1)
    """Requests per minute (UTC minute windows); none: no limit."""
    rpd: int | None = Field(default=None, ge=1)
    """Requests per UTC day; none: no limit."""
    max_n: int | None = Field(default=None, ge=1, le=10)
    """Most images one request may ask for; none: the model's own limit."""
    scopes: tuple[KeyScope, ...] = ()
    """What the key may do beyond generating images: ``admin`` reads ``GET /metrics`` when
    ``MESH_IMAGES_METRICS_AUTH`` is on (every tenant's series)."""

    @field_validator("hash")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return value.removeprefix("sha256:").lower()

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.hash)

    def allows(self, entry: ModelEntry) -> bool:
        """Whether a pattern matches the (resolved) model: its canonical id, or one of its
        aliases that names the model's own provider. An alias naming another provider
        (``aliases = ["local/fast"]`` on an OpenAI model) never lets a ``local/*`` key in."""
        own = entry.provider + "/"
        names = (entry.id, *(alias for alias in entry.aliases if alias.startswith(own)))
        return any(fnmatchcase(name, pattern) for pattern in self.models for name in names)


def _unique(keys: tuple[GatewayKey, ...]) -> tuple[GatewayKey, ...]:
    for field in ("hash", "label"):
        values = [getattr(key, field) for key in keys]
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            shown = "a key hash" if field == "hash" else f"label {repeated[0]!r}"
            raise ValueError(f"gateway keys must be unique: {shown} is configured twice")
    return keys


GatewayKeys = Annotated[tuple[GatewayKey, ...], AfterValidator(_unique)]
"""The configured keys: hashes and labels unique."""


def _bearer_token(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or len(token) > _MAX_TOKEN_BYTES:
        return None
    return token


class KeyRing:
    """The configured keys; ``authenticate`` finds the one a request presents."""

    def __init__(self, keys: Sequence[GatewayKey]) -> None:
        self._keys = tuple(keys)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (without keys, every caller is let in)."""
        return bool(self._keys)

    def authenticate(self, scope: Scope) -> GatewayKey | None:
        """The caller's key; None when no keys are configured; 401 ``unauthorized`` otherwise."""
        if not self._keys:
            return None
        token = _bearer_token(get_header(scope, b"authorization"))
        if token is None:
            raise Unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", headers=_CHALLENGE
            )
        digest = hashlib.sha256(token).digest()
        found: GatewayKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise Unauthorized("Invalid API key.", headers=_CHALLENGE)
        return found


def require_scope(key: GatewayKey | None, scope: KeyScope) -> None:
    """403 ``forbidden`` unless ``key`` holds ``scope`` (None: no keys configured, all may)."""
    if key is not None and scope not in key.scopes:
        raise Forbidden(f"This API key lacks the {scope!r} scope this route needs.")


def forbidden_model(entry: ModelEntry) -> Forbidden:
    """The 403 for a model the caller's key may not use."""
    return Forbidden(f"This API key may not use model {entry.id!r}.", param="model")


def authorize(key: GatewayKey | None, entry: ModelEntry, n: int) -> None:
    """403 ``forbidden`` for a model the key may not use; 400 for more images than it may ask."""
    if key is None:
        return
    if not key.allows(entry):
        raise forbidden_model(entry)
    if key.max_n is not None and n > key.max_n:
        raise InvalidRequest(
            f"This API key may ask for at most {key.max_n} image(s) per request (n).", param="n"
        )


def allowed_models(key: GatewayKey | None) -> Callable[[ModelEntry], bool] | None:
    """The test of the models ``key`` may use (for fallbacks); None when every model is."""
    if key is None:
        return None
    return key.allows
