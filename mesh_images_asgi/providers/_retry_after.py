"""An upstream's "wait this long" hint, parsed strictly and clamped.

``Retry-After`` is ``delay-seconds`` (``1*DIGIT``) or an ``HTTP-date`` (RFC 9110 section 10.2.3;
the date in any of the three forms of section 5.6.7). OpenAI also sends ``retry-after-ms`` (a
decimal number of milliseconds) and Google a ``retryDelay`` duration (``"12.5s"``). Whatever
the source:

- anything else (``inf``, ``1e400``, ``NaN``, ``-3``, ``soon-ish``, an impossible date) is
  ignored, as if the upstream had named no time: the router backs off as for any 5xx;
- a date in the past is 0;
- a value is clamped to ``MAX_DELAY`` (one day): a daily quota is the longest wait an upstream
  means, and a clamped value stays a number every client and ``math.ceil`` can take.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC

__all__ = ["MAX_DELAY", "clamped_delay", "retry_after_seconds"]

MAX_DELAY = 86_400.0
_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?")


def clamped_delay(seconds: float) -> float:
    """A non-negative number of seconds parsed from well-formed digits, at most ``MAX_DELAY``
    (400 digits are ``inf`` to ``float``: clamped too)."""
    return min(MAX_DELAY, seconds)


def retry_after_seconds(
    headers: Mapping[str, str], now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``retry-after``; None: no usable hint."""
    millis = headers.get("retry-after-ms", "").strip()
    if _DECIMAL.fullmatch(millis):
        return clamped_delay(float(millis) / 1000)
    value = headers.get("retry-after", "").strip()
    if _DIGITS.fullmatch(value):
        return clamped_delay(float(value))
    return _http_date_delay(value, now) if value else None


def _http_date_delay(value: str, now: Callable[[], float]) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime form: HTTP dates are always UTC
        when = when.replace(tzinfo=UTC)
    return clamped_delay(max(0.0, when.timestamp() - now()))
