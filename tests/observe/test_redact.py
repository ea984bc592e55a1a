"""Redaction: credential-shaped text and configured secrets reach no log line or traceback."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._access.keys import new_key
from mesh_images_asgi._observe.redact import (
    RedactingFilter,
    install_log_redaction,
    redact,
    register_secret,
)
from tests.support.leaks import WATCH, LeakWatch

GATEWAY_KEY = WATCH.secret(new_key())
ODD_SECRET = WATCH.secret("plain words 9 secret")  # no credential shape at all
OPENAI_KEY = WATCH.secret("sk-redact-test-0123456789")


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"key {GATEWAY_KEY} refused", "key [redacted] refused"),
        ("Authorization: Bearer abcdefgh12345678", "Authorization: [redacted]"),
        ("redis://:hunter2-pass@cache:6379/0", "redis://[redacted]@cache:6379/0"),
        ("redis://user:pw-123@cache/0", "redis://[redacted]@cache/0"),
        ("https://example.com/path@x", "https://example.com/path@x"),
        ("sk-proj-abcd****wxyz was refused", "[redacted] was refused"),
        ("model local/sketch, 3 images", "model local/sketch, 3 images"),
    ],
)
def test_credential_shaped_text_is_redacted(text: str, kept: str) -> None:
    assert redact(text) == kept


def test_registered_secrets_are_redacted_whatever_their_shape() -> None:
    register_secret(ODD_SECRET)
    register_secret("short")  # too short to redact safely: ignored
    register_secret(None)
    assert redact(f"got {ODD_SECRET}!") == "got [redacted]!"
    assert redact("a short word") == "a short word"


def test_the_app_registers_its_configured_secrets() -> None:
    secret = WATCH.secret("vertex-express-key-7781")
    ImagesApp(Settings(vertex_api_key=secret, openai_api_key=OPENAI_KEY))
    assert secret not in redact(f"calling with {secret}")


@pytest.fixture
def package_log() -> Iterator[io.StringIO]:
    """What a host's handler on the ``mesh_images_asgi`` logger would print."""
    install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("mesh_images_asgi")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_log_records_and_their_tracebacks_are_redacted(package_log: io.StringIO) -> None:
    register_secret(ODD_SECRET)
    logger = logging.getLogger("mesh_images_asgi")
    logger.warning("upstream said %s with %s", f"Bearer {GATEWAY_KEY}", ODD_SECRET)
    try:
        raise RuntimeError(f"failed with {OPENAI_KEY}")
    except RuntimeError:
        logger.exception("request %s failed", "req_1")
    logger.info("stack", stack_info=True, extra={"x": 1})
    text = package_log.getvalue()
    assert "upstream said [redacted] with [redacted]" in text
    assert "RuntimeError: failed with [redacted]" in text
    assert "Traceback" in text
    for secret in (GATEWAY_KEY, ODD_SECRET, OPENAI_KEY):
        assert secret not in text


def test_the_filter_is_installed_once() -> None:
    install_log_redaction()
    install_log_redaction()
    filters = logging.getLogger("mesh_images_asgi").filters
    assert sum(isinstance(item, RedactingFilter) for item in filters) == 1


def test_the_suite_watch_finds_a_leak_when_there_is_one() -> None:
    watch = LeakWatch()
    watch.secret("needle-123456")
    logger = logging.getLogger("tests.leak_demo")
    logger.propagate = False  # not even propagating loggers escape it
    try:
        with watch.installed():
            logger.error("found needle-123456 here")
            logger.error("nothing here")
    finally:
        logger.propagate = True
    watch.add_text("subprocess said needle-123456")
    assert watch.leaks() == {"needle-123456": 2}
