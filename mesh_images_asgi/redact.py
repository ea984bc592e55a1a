"""Remove what looks like a credential from text that may reach a client or a log line."""

from __future__ import annotations

import re

__all__ = ["redact"]

_SECRET = re.compile(
    r"(?:sk-[A-Za-z0-9_*-]{8,}"  # OpenAI keys (also their partly masked echoes)
    r"|AIza[0-9A-Za-z_-]{20,}"  # Google API keys
    r"|ya29\.[0-9A-Za-z._-]{10,}"  # Google OAuth access tokens
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"  # any bearer token
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----)",
    re.DOTALL,
)


def redact(text: str) -> str:
    """``text`` with anything credential-shaped replaced by ``[redacted]``."""
    return _SECRET.sub("[redacted]", text)
