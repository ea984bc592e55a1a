"""What every HTTP upstream shares: one JSON POST, and the mapping of failures to our errors.

    transport failure                     -> 502 upstream_error / connection_error
    read/write/pool timeout               -> 504 gateway_timeout / provider_timeout
    truncated body, non-JSON 2xx body     -> 502 upstream_error / bad_response
    401, 403                              -> 502 upstream_auth_error
    429                                   -> 429 upstream_rate_limit_error (+ Retry-After)
    500, 502, 504 ... / 503, 529          -> 502 upstream_error / internal_provider_error,
                                                                    provider_overloaded
    404                                   -> 502 upstream_error / model_not_found
    other 4xx                             -> 400 invalid_request (provider_code, provider_error)

Providers decide what a 4xx *means* first (a moderation refusal is a content-policy error, not a
bad request) and call ``error_for_status`` for everything else.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from ..errors import (
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from ..redact import redact

__all__ = [
    "bad_response",
    "error_for_status",
    "parse_json_object",
    "retry_after_seconds",
    "send_json",
    "transport_error",
]


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def bad_response(provider: str, why: str) -> UpstreamError:
    return UpstreamError(
        f"{provider} sent a response we could not read: {why}.", provider_code="bad_response"
    )


def transport_error(provider: str, exc: httpx.TransportError) -> GatewayError:
    """Map an httpx transport exception (any transport) to our error."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return GatewayTimeout(
            f"{provider} did not answer in time.", provider_code="provider_timeout"
        )
    if isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
        return bad_response(provider, "the connection broke while reading the answer")
    return UpstreamError(f"Could not reach {provider}.", provider_code="connection_error")


def error_for_status(
    provider: str,
    status: int,
    message: str,
    *,
    provider_code: str | None = None,
    provider_error: dict[str, Any] | None = None,
    retry_after: float | None = None,
) -> GatewayError:
    """The error for a non-2xx upstream answer that has no provider-specific meaning."""
    text = (
        f"{provider} answered {status}: {redact(message)}"
        if message
        else f"{provider} answered {status}."
    )
    if status in (401, 403):
        return UpstreamAuthError(text, provider_code=provider_code or "authentication_error")
    if status == 429:
        return UpstreamRateLimited(
            text,
            provider_code=provider_code or "rate_limited",
            retry_after_seconds=retry_after if retry_after is not None else 1.0,
        )
    if status >= 500:
        overloaded = status in (503, 529)
        code = "provider_overloaded" if overloaded else "internal_provider_error"
        return UpstreamError(text, provider_code=code)
    if status == 404:
        return UpstreamError(text, provider_code="model_not_found")
    return InvalidRequest(text, provider_code=provider_code, provider_error=provider_error)


def parse_json_object(provider: str, content: bytes) -> dict[str, Any]:
    """A JSON object body, or ``bad_response``."""
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise bad_response(provider, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise bad_response(provider, "the body is not a JSON object")
    return data


async def send_json(
    client: httpx.AsyncClient,
    provider: str,
    url: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
) -> httpx.Response:
    """POST ``payload`` as JSON and read the whole answer; transport failures become our errors."""
    try:
        return await client.post(
            url,
            content=json.dumps(payload).encode(),
            headers={"content-type": "application/json", **headers},
        )
    except httpx.TransportError as exc:
        raise transport_error(provider, exc) from None
