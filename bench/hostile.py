"""Run the hostile-upstream suite (tests/test_hostile_upstreams.py) on a candidate client
instead of the default, to compare them by it: ``python bench/hostile.py pyreqwest [pytest args]``.

The tests that build aiohttp's client themselves (the IPv6 blackhole, through aiohttp's resolver
hook) still run on aiohttp; every other test gets the candidate (``bench/candidates.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh_images_asgi._config import Settings  # noqa: E402


def pyreqwest(settings: Settings) -> Any:
    from bench.candidates import PyreqwestUpstream

    return PyreqwestUpstream(
        connect_timeout=settings.connect_timeout,
        max_connections=settings.max_upstream_connections,
        max_answer_bytes=settings.max_upstream_bytes,
    )


CANDIDATES = {"pyreqwest": pyreqwest}


class Candidate:
    def __init__(self, name: str) -> None:
        self.factory = CANDIDATES[name]

    @pytest.fixture(autouse=True)
    def _candidate_client(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("tests.test_hostile_upstreams.create_upstream_client", self.factory)


if __name__ == "__main__":
    args = ["-q", "-p", "no:randomly", "-p", "no:cacheprovider", "--rootdir", str(ROOT)]
    tests = str(ROOT / "tests" / "test_hostile_upstreams.py")
    sys.exit(pytest.main([*args, tests, *sys.argv[2:]], plugins=[Candidate(sys.argv[1])]))
