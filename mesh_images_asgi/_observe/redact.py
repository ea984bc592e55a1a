"""Remove what looks like a credential from text that may reach a client or a log line.

Two nets: patterns for credential-shaped text (provider keys, bearer tokens, gateway keys,
private keys, passwords in URLs), and the exact values of the secrets this process was configured
with (``register_secret``: provider keys, the Redis URL's password...), whatever their shape.
``RedactingFilter`` applies both to every record of the ``mesh_images_asgi`` logger, including
the traceback of ``logger.exception``.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["RedactingFilter", "install_log_redaction", "redact", "register_secret"]

_MARK = "[redacted]"
_SECRET = re.compile(
    r"(?:sk-[A-Za-z0-9_*-]{8,}"  # OpenAI keys (also their partly masked echoes)
    r"|AIza[0-9A-Za-z_-]{20,}"  # Google API keys
    r"|ya29\.[0-9A-Za-z._-]{10,}"  # Google OAuth access tokens
    r"|mik_[A-Za-z0-9_-]{16,}"  # our gateway keys
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"  # any bearer token
    r"|(?<=://)[^\s/@:]*:[^\s/@]+(?=@)"  # user:password@ in a URL
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----)",
    re.DOTALL,
)
_MIN_SECRET_CHARS = 6  # shorter values would redact ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()
_known: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Redact ``value`` wherever it appears from now on (values under 6 characters are ignored)."""
    global _known
    if value is None or len(value) < _MIN_SECRET_CHARS or value in _secrets:
        return
    with _lock:
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _known = re.compile("|".join(re.escape(secret) for secret in ordered))


def redact(text: str) -> str:
    """``text`` with anything credential-shaped, or a registered secret, replaced."""
    known = _known
    if known is not None:
        text = known.sub(_MARK, text)
    return _SECRET.sub(_MARK, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) through ``redact``; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach one ``RedactingFilter`` to ``logger`` (default: ``mesh_images_asgi``); idempotent."""
    target = logger if logger is not None else logging.getLogger("mesh_images_asgi")
    if not any(isinstance(existing, RedactingFilter) for existing in target.filters):
        target.addFilter(RedactingFilter())
