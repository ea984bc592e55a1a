"""The snippet of each ``docs/clients/*.md`` page runs as written against a live gateway.

Each page's code block is run in a fresh directory with its ``http://127.0.0.1:8000`` replaced by
the live server's address; the images it writes must decode.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_images_asgi import Settings
from mesh_images_asgi.main import create_app
from tests.helpers import decode_image
from tests.support.live import serve

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "clients"
LITELLM = ROOT / ".litellm" / "bin" / "python"
BLOCK = re.compile(r"```(python|sh)\n(.*?)```", re.DOTALL)

# page -> the images its snippet writes
WRITES = {
    "openai.md": ["lighthouse.png", "lighthouse-streamed.png"],
    "meshapi.md": ["kite.png"],
    "curl.md": ["lighthouse.png"],
    "httpx-sse.md": ["fox.png", "fox-openai.png"],
    "litellm.md": ["lighthouse.png"],
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(create_app(Settings(local_latency=0.05))) as url:
        yield url


def test_every_client_page_is_checked() -> None:
    assert {page.name for page in PAGES.glob("*.md")} == set(WRITES)


@pytest.mark.parametrize("page", sorted(WRITES))
def test_snippet_runs(page: str, base_url: str, tmp_path: Path) -> None:
    match = BLOCK.search((PAGES / page).read_text())
    assert match is not None
    language, code = match.groups()
    code = code.replace("http://127.0.0.1:8000", base_url)
    if language == "sh":
        command = ["bash", "-euo", "pipefail", "-c", code]
    elif page == "litellm.md":
        if not LITELLM.exists():
            pytest.skip("LiteLLM's virtualenv .litellm/ is absent: `make litellm-client`")
        command = [str(LITELLM), "-c", code]
    else:
        command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in WRITES[page]:
        decode_image((tmp_path / name).read_bytes())
