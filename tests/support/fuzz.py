"""Shared by the generated-input tests: a cheap local model, and the envelope every error has."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SMALL_LOCAL", "assert_error_envelope"]

# local/sketch kept small, so that the valid requests that generators find render quickly.
SMALL_LOCAL: dict[str, dict[str, Any]] = {
    "local/sketch": {
        "sizes": ["256x256", "auto"],
        "default_size": "256x256",
        "aspect_ratios": {"1:1": "256x256"},
        "free_size": {"multiple_of": 8, "min_edge": 64, "max_edge": 256, "max_pixels": 65536},
        "max_n": 2,
    }
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def assert_error_envelope(status: int, headers: Mapping[str, str], body: bytes) -> None:
    """A non-2xx answer is the contract's envelope, with the ``x-request-id`` it names."""
    assert status < 500, (status, body[:500])
    assert headers.get("content-type") == "application/json", headers
    payload = json.loads(body)
    assert set(payload) == {"error", "request_id"}, payload
    error = payload["error"]
    assert isinstance(error["code"], str)
    assert error["code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert payload["request_id"] == headers.get("x-request-id")
    assert _REQUEST_ID.match(payload["request_id"])
