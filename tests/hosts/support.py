"""What the host tests check over real HTTP: our JSON answer, our stream, the host's own route."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from mesh_images_asgi import Settings
from tests.helpers import decode_image, decode_item

__all__ = [
    "GEN",
    "ORIGIN",
    "Stream",
    "check_stream",
    "image_and_stream",
    "local_env",
    "local_settings",
    "post_image",
    "read_stream",
]

GEN = "/v1/images/generations"
ORIGIN = "https://app.example.com"
BODY: dict[str, Any] = {"model": "local/sketch", "prompt": "a lighthouse", "size": "64x64"}


def local_settings(latency: float = 0.4, interval: float = 0.1) -> Settings:
    """Settings for the offline ``local`` models: a simulated latency and a short keep-alive."""
    return Settings(local_latency=latency, keepalive_interval=interval)


def local_env(latency: float, interval: float) -> dict[str, str]:
    """The same settings as environment variables, for servers run as subprocesses."""
    return {
        "MESH_IMAGES_LOCAL_LATENCY": str(latency),
        "MESH_IMAGES_KEEPALIVE_INTERVAL": str(interval),
    }


def post_image(
    base_url: str, prefix: str = "", headers: dict[str, str] | None = None
) -> httpx.Response:
    """``POST {prefix}/v1/images/generations`` (JSON); checks the image decodes at 64x64."""
    response = httpx.post(base_url + prefix + GEN, json=BODY, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert decode_item(response.json()["data"][0]).size == (64, 64)
    return response


@dataclass
class Stream:
    """A stream as it arrived: response headers, and every SSE frame with its arrival time."""

    headers: httpx.Headers
    frames: list[tuple[float, bytes]] = field(default_factory=list)


def read_stream(base_url: str, prefix: str = "", headers: dict[str, str] | None = None) -> Stream:
    """``POST`` with ``"stream": true``, reading frames off the socket as they come."""
    buffer = b""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        started = time.monotonic()
        with client.stream(
            "POST", prefix + GEN, json={**BODY, "stream": True}, headers=headers
        ) as response:
            assert response.status_code == 200
            stream = Stream(response.headers)
            for chunk in response.iter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    stream.frames.append((time.monotonic() - started, frame))
    assert buffer == b""
    return stream


def image_and_stream(
    base_url: str, prefix: str = "", headers: dict[str, str] | None = None
) -> tuple[httpx.Response, Stream]:
    """``post_image`` and ``read_stream`` at the same time (two connections, one upstream wait)."""
    with ThreadPoolExecutor(1) as pool:
        image = pool.submit(post_image, base_url, prefix, headers)
        stream = read_stream(base_url, prefix, headers)
        return image.result(), stream


def check_stream(stream: Stream, latency: float, interval: float) -> None:
    """The streaming contract: headers, the processing chunk first, pings while the upstream
    works, a final chunk whose image decodes, then ``[DONE]``. Only orderings and bounds that a
    loaded machine cannot break are checked here; exact timing is tested on fake loop time
    (``tests/asgi/test_sse.py``)."""
    assert stream.headers["content-type"] == "text/event-stream"
    assert "content-length" not in stream.headers
    assert "content-encoding" not in stream.headers
    first_at, first = stream.frames[0]
    assert json.loads(first.removeprefix(b"data: "))["status"] == "processing"
    assert first_at <= stream.frames[1][0]  # first on the wire, pings next
    pings = sum(1 for _, frame in stream.frames if frame == b": ping")
    expected = round(latency / interval)  # one per silent interval; a slow machine loses some
    assert 1 <= pings <= expected + 1, (pings, expected)
    done_at, done = stream.frames[-1]
    assert done == b"data: [DONE]"
    assert done_at >= latency
    final = json.loads(stream.frames[-2][1].removeprefix(b"data: "))
    assert final["status"] == "completed"
    url: str = final["data"][0]["url"]
    assert decode_image(base64.b64decode(url.split(",", 1)[1])).size == (64, 64)
