"""LiteLLM's SDK (its own virtualenv: ``make litellm-client``) against the gateway on 127.0.0.1.

What it shows (LiteLLM 1.110): ``image_generation`` works, with ``response_format="b64_json"``
passed in ``extra_body`` (LiteLLM itself refuses the parameter for model names it does not know,
before any request). ``stream=True`` fails inside LiteLLM whatever the server sends: it passes
``stream`` in the openai SDK's ``extra_body``, so the SDK does not know the answer is a stream,
hands back the event stream as text, and LiteLLM calls ``.model_dump()`` on that ``str``
(BerriAI/litellm#19569). The gateway's part is checked here too: it answered that request 200
with an event stream in OpenAI's dialect (LiteLLM's openai SDK sends ``X-Stainless-*``).
See docs/clients/litellm.md.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mesh_images_asgi import Settings
from mesh_images_asgi._core.asgi import Message, Receive, Scope, Send
from mesh_images_asgi.main import create_app
from tests.helpers import decode_image
from tests.support.live import serve

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".litellm" / "bin" / "python"
SCRIPT = Path(__file__).with_name("clients") / "litellm_calls.py"

pytestmark = pytest.mark.skipif(
    not PYTHON.exists(),
    reason="LiteLLM's virtualenv .litellm/ is absent: create it with `make litellm-client`",
)


class Recording:
    """Records each request's stream flag, dialect headers and answer status and type."""

    def __init__(self) -> None:
        self.app = create_app(Settings(local_latency=0.05))
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {
            "stainless": any(name.startswith(b"x-stainless-") for name, _ in scope["headers"])
        }
        self.seen.append(record)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                record["type"] = dict(message["headers"]).get(b"content-type")
            await send(message)

        await self.app(scope, receive, recording_send)


@pytest.fixture(scope="module")
def results() -> tuple[dict[str, Any], Recording]:
    app = Recording()
    with serve(app) as url:
        done = subprocess.run(
            [str(PYTHON), str(SCRIPT), url], capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), app


def test_image_generation_returns_a_decodable_image(
    results: tuple[dict[str, Any], Recording],
) -> None:
    answer = results[0]["url"]
    assert answer["ok"], answer
    url = answer["url"][0]
    assert url.startswith("data:image/png;base64,")
    assert decode_image(base64.b64decode(url.split(",", 1)[1])).size == (256, 256)


def test_b64_json_in_extra_body_returns_b64_json(
    results: tuple[dict[str, Any], Recording],
) -> None:
    answer = results[0]["b64_json_extra_body"]
    assert answer["ok"], answer
    assert decode_image(base64.b64decode(answer["b64_json"][0])).size == (256, 256)


def test_b64_json_as_a_parameter_is_refused_by_litellm_itself(
    results: tuple[dict[str, Any], Recording],
) -> None:
    answer = results[0]["b64_json"]
    if answer["ok"]:  # a LiteLLM that lets it through must get b64_json from us
        assert decode_image(base64.b64decode(answer["b64_json"][0])).size == (256, 256)
    else:
        assert answer["error"].startswith("UnsupportedParamsError")


def test_stream_is_served_by_us_and_dropped_by_litellm(
    results: tuple[dict[str, Any], Recording],
) -> None:
    answers, app = results
    # Four scenarios, one refused inside LiteLLM: three requests reached the gateway.
    assert len(app.seen) == 3
    streamed = app.seen[-1]
    assert (streamed["status"], streamed["type"]) == (200, b"text/event-stream")
    assert streamed["stainless"]  # so the gateway answered in OpenAI's dialect
    answer = answers["stream"]
    if not answer["ok"]:
        assert "model_dump" in answer["error"]  # BerriAI/litellm#19569, not the stream's format
