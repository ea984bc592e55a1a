"""``_core/errors.py``: each error's OpenAI ``type`` and if a retry may help
(``x-should-retry``)."""

from __future__ import annotations

import pytest

from mesh_images_asgi._core import errors
from mesh_images_asgi._core.errors import GatewayError

# (class, OpenAI type, may a retry help)
TABLE: list[tuple[type[GatewayError], str, bool]] = [
    (errors.InvalidRequest, "invalid_request_error", False),
    (errors.InvalidJSON, "invalid_request_error", False),
    (errors.ContentPolicyViolation, "invalid_request_error", False),
    (errors.Unauthorized, "authentication_error", False),
    (errors.ByokFallbackDisabled, "authentication_error", False),
    (errors.ByokRateLimited, "rate_limit_error", True),
    (errors.Forbidden, "permission_error", False),
    (errors.ModelNotFound, "invalid_request_error", False),
    (errors.NotFound, "invalid_request_error", False),
    (errors.RequestTimeout, "invalid_request_error", True),
    (errors.ModelRetired, "invalid_request_error", False),
    (errors.UrlExpired, "invalid_request_error", False),
    (errors.RequestTooLarge, "invalid_request_error", False),
    (errors.UnsupportedMediaType, "invalid_request_error", False),
    (errors.ValidationFailed, "invalid_request_error", False),
    (errors.RateLimitExceeded, "rate_limit_error", True),
    (errors.UpstreamRateLimited, "rate_limit_error", True),
    (errors.NotImplementedByGateway, "server_error", False),
    (errors.UpstreamError, "server_error", True),
    (errors.UpstreamAuthError, "server_error", False),
    (errors.ImageStoreError, "server_error", True),
    (errors.ServiceUnavailable, "server_error", True),
    (errors.ProviderNotAvailable, "server_error", True),
    (errors.GatewayTimeout, "server_error", True),
    (errors.InternalError, "server_error", True),
]


def test_the_table_covers_every_error() -> None:
    exported = {
        getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type) and name != "GatewayError"
    }
    assert exported - {errors.MethodNotAllowed} == {row[0] for row in TABLE}


@pytest.mark.parametrize(("cls", "openai_type", "retriable"), TABLE)
def test_type_and_retry_header(cls: type[GatewayError], openai_type: str, retriable: bool) -> None:
    error = cls("Something.")
    body = error.error_object()
    assert (body["code"], body["type"]) == (cls.code, openai_type)
    headers = dict(error.response_headers())
    assert headers.get(b"x-should-retry") == (None if retriable else b"false")


def test_method_not_allowed_says_do_not_retry() -> None:
    error = errors.MethodNotAllowed("PUT", ["GET"])
    assert error.error_object()["type"] == "invalid_request_error"
    assert (b"x-should-retry", b"false") in error.response_headers()
