from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from tests.support.leaks import WATCH

# The suite decodes ``url`` answers as ``data:`` URLs and must not write into the user's cache
# (module-level ``Settings()`` are built at collection, before any fixture): the image store's
# tests (tests/store/) choose their store and directory themselves.
os.environ["MESH_IMAGES_STORE"] = "none"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see a developer's real provider credentials or config."""
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "MESH_IMAGES_CONFIG",
        "MESH_IMAGES_DEFAULT_MODEL",
        "MESH_IMAGES_VERTEX_BASE_URL",
        "MESH_IMAGES_VERTEX_API_KEY",
        "MESH_IMAGES_API_KEYS",
        "MESH_IMAGES_REDIS_URL",
        "MESH_IMAGES_RATE_LIMIT_FAIL_OPEN",
        "MESH_IMAGES_BODY_TIMEOUT",
        "MESH_IMAGES_STORE_DIR",
        "MESH_IMAGES_STORE_KEY",
        "MESH_IMAGES_PUBLIC_URL",
        "MESH_IMAGES_URL_TTL",
        "XDG_CACHE_HOME",
        # The default upstream client honours proxies from the environment (trust_env).
        *("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"),
        *("http_proxy", "https_proxy", "all_proxy", "no_proxy"),
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MESH_IMAGES_LOCAL_LATENCY", "0")


@pytest.fixture(scope="session", autouse=True)
def _watch_logs_for_secrets() -> Iterator[None]:
    """Every log record of the whole run goes to ``WATCH`` (ours at DEBUG); see the hook below."""
    levels = {"mesh_images_asgi": logging.DEBUG, "httpx": logging.INFO}
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    with WATCH.installed():
        yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any secret a test used appears in any log line of the run."""
    if not WATCH.texts:
        return
    leaks = WATCH.leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        shown = ", ".join(f"{secret[:6]}... in {count} line(s)" for secret, count in leaks.items())
        line = f"SECRET LEAK: configured secrets found in the logs: {shown}"
    else:
        line = (
            f"secret leak check: {len(WATCH.secrets)} secrets, none in "
            f"{len(WATCH.texts)} log records"
        )
    if reporter is not None:
        reporter.write_line(line, red=bool(leaks))
