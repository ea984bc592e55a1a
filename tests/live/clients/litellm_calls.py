"""LiteLLM's SDK against the gateway; run by ``tests/live/test_litellm.py`` with LiteLLM's own
virtualenv (``make litellm-client``), never imported by the test suite itself.

Usage: ``.litellm/bin/python tests/live/clients/litellm_calls.py BASE_URL``. Prints one JSON
object: per scenario, either ``{"ok": true, "images": [b64...], "url": ...}`` or
``{"ok": false, "error": "<class>: <message>"}``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from GitHub

import litellm

SCENARIOS: dict[str, dict[str, Any]] = {
    "url": {},
    "b64_json": {"response_format": "b64_json"},
    "b64_json_extra_body": {"extra_body": {"response_format": "b64_json"}},
    "stream": {"stream": True, "partial_images": 2},
}


def _call(base_url: str, options: dict[str, Any]) -> dict[str, Any]:
    try:
        response = litellm.image_generation(
            model="openai/local/sketch",  # LiteLLM's OpenAI provider; the gateway's model id
            prompt="a lighthouse at dusk",
            size="256x256",
            api_base=base_url + "/v1",
            api_key="sk-any",
            **options,
        )
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
    items = response.data or []
    return {
        "ok": True,
        "b64_json": [item.b64_json for item in items],
        "url": [item.url for item in items],
    }


def main() -> None:
    base_url = sys.argv[1]
    print(json.dumps({name: _call(base_url, options) for name, options in SCENARIOS.items()}))


if __name__ == "__main__":
    main()
