"""A watch for secrets in log lines, over the whole test run.

Tests register every secret they use (``WATCH.secret(value)`` returns the value); every log
record of the run is captured as the handlers would see it (after the loggers' own filters, so
after our redaction), also from loggers that do not propagate; text from elsewhere (a subprocess's
log) is added with ``add_text``. ``leaks()`` counts, per secret, the captured texts holding it;
the root conftest fails the run if there is any.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SUITE_SECRETS", "WATCH", "LeakWatch"]

# Credentials that tests and emulators use, some on purpose inside upstream errors and exceptions
# that the gateway logs: none may reach a log line.
SUITE_SECRETS = (
    "sk-emulator-0123456789abcdef",  # tests/emulators/openai.py: the emulator's key
    "sk-test-0123456789abcdef",  # tests/providers/test_openai.py
    "sk-proj-abcdefghijklmnopqrstuvwxyz0123",  # the emulator's invalid_api_key() echo
    "sk-1234567890abcdef",  # tests/asgi/test_app.py: an exception the app logs
    "ya29.a0AfB_secret_token_value",  # tests/providers/test_vertex.py
    "ya29.emu-",  # tests/emulators/oauth.py: prefix of every access token it issues
)


class LeakWatch:
    """Secrets to look for, and the log texts they must not appear in."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.texts: list[str] = []
        self._lock = threading.Lock()

    def secret(self, value: str) -> str:
        """Look for ``value`` in every log line; returns it."""
        with self._lock:
            self.secrets.add(value)
        return value

    def add_text(self, text: str) -> None:
        """Look in ``text`` too (a subprocess's output, a log file)."""
        with self._lock:
            self.texts.append(text)

    def record(self, record: logging.LogRecord) -> None:
        exc_text = record.exc_text
        if record.exc_info and not exc_text:  # what a handler's formatter would print
            exc_text = logging.Formatter().formatException(record.exc_info)
        parts = [record.getMessage()]
        parts.extend(text for text in (exc_text, record.stack_info) if text)
        self.add_text("\n".join(parts))

    def leaks(self) -> dict[str, int]:
        """Per secret found: in how many texts."""
        with self._lock:
            texts, secrets = list(self.texts), set(self.secrets)
        found = {secret: sum(secret in text for text in texts) for secret in secrets}
        return {secret: count for secret, count in found.items() if count}

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Capture every log record handled while the block runs, whatever its logger."""
        original = logging.Logger.callHandlers
        watch = self

        def call_handlers(logger: logging.Logger, record: logging.LogRecord) -> None:
            watch.record(record)
            original(logger, record)

        logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            logging.Logger.callHandlers = original  # type: ignore[method-assign]


WATCH = LeakWatch()
for _secret in SUITE_SECRETS:
    WATCH.secret(_secret)
