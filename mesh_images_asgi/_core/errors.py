"""The gateway's errors and their wire envelope.

Every failure the client can see is a ``GatewayError``; its subclass fixes the HTTP status and
the stable ``error.code``::

    GatewayError
     ├── InvalidRequest              400 invalid_request      (the model can't do that; has param)
     ├── InvalidJSON                 400 invalid_json
     ├── ContentPolicyViolation      400 content_policy_violation
     ├── Unauthorized                401 unauthorized         (WWW-Authenticate)
     ├── ByokFallbackDisabled        401 byok_fallback_disabled (the provider refused the key the
     │    │                                                      client brought; fallback is off)
     │    └── ByokRateLimited        429 byok_fallback_disabled (it rate-limited it; Retry-After)
     ├── Forbidden                   403 forbidden            (the key may not use that model)
     ├── ModelNotFound               404 model_not_found
     ├── NotFound                    404 not_found
     ├── MethodNotAllowed            405 method_not_allowed   (Allow header)
     ├── RequestTimeout              408 request_timeout      (the body did not arrive in time)
     ├── ModelRetired                410 model_retired        (its provider shut it down, or
     │                                                        Imagen's edit modes; names the
     │                                                        replacement)
     ├── UrlExpired                  410 url_expired          (a hosted image URL past its expiry)
     ├── RequestTooLarge             413 request_too_large
     ├── UnsupportedMediaType        415 unsupported_media_type
     ├── ValidationFailed            422 validation_error     (details)
     ├── RateLimitExceeded           429 rate_limit_exceeded  (Retry-After, x-ratelimit-*)
     ├── UpstreamRateLimited         429 upstream_rate_limit_error (Retry-After)
     ├── NotImplementedByGateway     501 not_implemented
     ├── UpstreamError               502 upstream_error       (provider_code)
     ├── UpstreamAuthError           502 upstream_auth_error
     ├── ImageStoreError             502 image_store_error    (the image store refused the images)
     ├── ServiceUnavailable          503 service_unavailable  (rate limiting down, fail-closed)
     ├── ProviderNotAvailable        503 provider_not_available (circuit open, provider saturated,
     │                                                          shutting down; Retry-After)
     ├── GatewayTimeout              504 gateway_timeout      (provider_code provider_timeout)
     └── InternalError               500 internal_error       (a bug: the log has the traceback)

The envelope is ``{"error": {"code", "type", "message", ...}, "request_id": "req_..."}``;
optional keys appear only when set. ``type`` is OpenAI's name for the same class of error
(``invalid_request_error``, ``authentication_error``, ``permission_error``, ``rate_limit_error``,
``server_error``), so that ``openai.APIError.type`` is set; ``code`` stays Mesh's, the one to
branch on. An error a retry cannot fix (``retriable`` False: every 4xx but 408, 409 and 429, a
501, a refused upstream key) answers ``x-should-retry: false``, which the openai SDK obeys.
This module is the one place that maps an error to these. An error that ends a routed
generation also carries its ``routing`` record (see ``_routing/router.py``), which stream error
events
include. Messages never carry secrets, stack
traces or image data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "ByokFallbackDisabled",
    "ByokRateLimited",
    "ContentPolicyViolation",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "ImageStoreError",
    "InternalError",
    "InvalidJSON",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotFound",
    "ModelRetired",
    "NotFound",
    "NotImplementedByGateway",
    "ProviderNotAvailable",
    "RateLimitExceeded",
    "RequestTimeout",
    "RequestTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamAuthError",
    "UpstreamError",
    "UpstreamRateLimited",
    "UrlExpired",
    "ValidationFailed",
    "openai_type",
]


class GatewayError(Exception):
    """An error with an HTTP status, a stable code and the contract's envelope."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retriable: ClassVar[bool | None] = None
    """Whether the same request may succeed later; None: decided by ``status``."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        details: Sequence[dict[str, Any]] | None = None,
        provider_code: str | None = None,
        provider_error: dict[str, Any] | None = None,
        retry_after_seconds: float | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = list(details) if details is not None else None
        self.provider_code = provider_code
        self.provider_error = provider_error
        self.retry_after_seconds = retry_after_seconds
        self.headers = list(headers)
        self.routing: dict[str, Any] | None = None
        """The routing record of the generation this error ended, if it ended one."""

    def error_object(self) -> dict[str, Any]:
        """The inner ``error`` object of the envelope."""
        error: dict[str, Any] = {
            "code": self.code,
            "type": openai_type(self.status),
            "message": self.message,
        }
        optional = (
            ("param", self.param),
            ("details", self.details),
            ("provider_code", self.provider_code),
            ("provider_error", self.provider_error),
            ("retry_after_seconds", self._retry_after()),
        )
        error.update((key, value) for key, value in optional if value is not None)
        return error

    def envelope(self, request_id: str) -> bytes:
        """The whole JSON body."""
        return json.dumps({"error": self.error_object(), "request_id": request_id}).encode()

    def _retry_after(self) -> int | None:
        """Whole seconds, rounded up: ``Retry-After`` takes integers, and so do clients."""
        if self.retry_after_seconds is None:
            return None
        return max(0, math.ceil(self.retry_after_seconds))

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers this error adds to the response (``Retry-After``, ``Allow``...)."""
        headers = list(self.headers)
        retry_after = self._retry_after()
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        if not self.may_succeed_on_retry():
            headers.append((b"x-should-retry", b"false"))
        return headers

    def may_succeed_on_retry(self) -> bool:
        """False when sending the same request again cannot help (``x-should-retry: false``)."""
        if self.retriable is not None:
            return self.retriable
        return self.status in _RETRIABLE_STATUSES or (self.status >= 500 and self.status != 501)


_RETRIABLE_STATUSES = frozenset({408, 409, 429})
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def openai_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status (what ``openai.APIError.type`` reads)."""
    if status >= 500:
        return "server_error"
    return _OPENAI_TYPES.get(status, "invalid_request_error")


class InvalidRequest(GatewayError):
    """The model cannot do what was asked (400, with ``param`` naming the field)."""

    status = 400
    code = "invalid_request"


class InvalidJSON(GatewayError):
    status = 400
    code = "invalid_json"


class ContentPolicyViolation(GatewayError):
    """The upstream's moderation refused the prompt or its images (400)."""

    status = 400
    code = "content_policy_violation"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class ByokFallbackDisabled(GatewayError):
    """The provider refused the key the client brought, and the gateway may not use its own."""

    status = 401
    code = "byok_fallback_disabled"


class ByokRateLimited(ByokFallbackDisabled):
    """The provider rate-limited the key the client brought (fallback off): the provider's 429."""

    status = 429


class ModelNotFound(GatewayError):
    status = 404
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, allowed: Sequence[str]) -> None:
        allow = ", ".join(allowed)
        super().__init__(
            f"Method {method} is not allowed here; use {allow}.",
            headers=[(b"allow", allow.encode())],
        )


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"


class ModelRetired(GatewayError):
    """The model was shut down by its provider and the gateway refuses it
    (``_routing/lifecycle.py``),
    or what was asked of it was retired (Imagen's edit modes); the message names the
    replacement."""

    status = 410
    code = "model_retired"


class UrlExpired(GatewayError):
    status = 410
    code = "url_expired"


class RequestTooLarge(GatewayError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(GatewayError):
    status = 422
    code = "validation_error"


class RateLimitExceeded(GatewayError):
    status = 429
    code = "rate_limit_exceeded"


class UpstreamRateLimited(GatewayError):
    """``retry_after_seconds`` is the upstream's hint (None: it gave none); clients always get a
    ``Retry-After``, 1 s when the upstream named no time."""

    status = 429
    code = "upstream_rate_limit_error"

    def _retry_after(self) -> int | None:
        hint = super()._retry_after()
        return 1 if hint is None else hint


class NotImplementedByGateway(GatewayError):
    status = 501
    code = "not_implemented"


class UpstreamError(GatewayError):
    """The upstream failed (502); ``provider_code`` says how: ``internal_provider_error``,
    ``provider_overloaded``, ``connection_error``, ``bad_response``, ..."""

    status = 502
    code = "upstream_error"


class UpstreamAuthError(GatewayError):
    """The upstream refused the gateway's own credentials: an operator must fix them."""

    status = 502
    code = "upstream_auth_error"
    retriable = False


class ImageStoreError(GatewayError):
    """The images were generated but could not be stored: the client gets this, never a URL
    that does not work."""

    status = 502
    code = "image_store_error"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "service_unavailable"


class ProviderNotAvailable(GatewayError):
    """No upstream can take the request now; ``retry_after_seconds`` says when to try again."""

    status = 503
    code = "provider_not_available"


class GatewayTimeout(GatewayError):
    status = 504
    code = "gateway_timeout"


class InternalError(GatewayError):
    """A failure of the gateway itself; the client sees no detail, the log has the traceback."""

    status = 500
    code = "internal_error"
