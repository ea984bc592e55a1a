"""A base install (no extras) must serve: run in a fresh virtualenv with only `pip install .`.

Mounts ImagesMiddleware in front of a plain ASGI host app, then over httpx's in-process transport:
one local generation, one error in the contract's envelope, the host's own route untouched, the
standalone app's GET /metrics, and the playground's files (package data of the installed wheel).
Exits non-zero on the first thing that is wrong.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import sys
from typing import Any

import httpx

from mesh_images_asgi import ImagesApp, ImagesMiddleware, Settings


async def host(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"host"})


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"base-install smoke: FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"base-install smoke: ok: {what}")


async def main() -> None:
    for extra in ("opentelemetry", "redis", "google.auth", "uvicorn"):
        check(importlib.util.find_spec(extra.split(".")[0]) is None, f"{extra} is not installed")
    settings = Settings(local_latency=0)
    wrapped = ImagesMiddleware(host, settings=settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://smoke"
    ) as client:
        answer = await client.post(
            "/v1/images/generations",
            json={
                "model": "local/sketch",
                "prompt": "a lighthouse",
                "size": "256x256",
                "response_format": "b64_json",
            },
        )
        check(answer.status_code == 200, f"a local generation is 200 ({answer.status_code})")
        png = base64.b64decode(answer.json()["data"][0]["b64_json"])
        check(png.startswith(b"\x89PNG"), "the image is a PNG")
        refused = await client.post("/v1/images/generations", json={"model": "local/sketch"})
        error = refused.json().get("error", {})
        check(
            refused.status_code == 422 and error.get("code") == "validation_error",
            f"a bad request is 422 validation_error in the envelope ({refused.status_code})",
        )
        other = await client.get("/elsewhere")
        check(other.text == "host", "the host's own route is untouched")
    standalone = ImagesApp(settings, health=True, metrics_route=True, playground=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=standalone), base_url="http://smoke"
    ) as client:
        await client.post(
            "/v1/images/generations",
            json={"model": "local/sketch", "prompt": "p", "size": "256x256"},
        )
        metrics = await client.get("/metrics")
        check(
            metrics.status_code == 200 and "mesh_images_requests_total" in metrics.text,
            "GET /metrics counts the request",
        )
        for path in ("/", "/playground.js", "/playground.css", "/vendor/eventsource-parser.js"):
            page = await client.get(path)
            check(
                page.status_code == 200 and len(page.content) > 100,
                f"the playground's {path} is served ({page.status_code})",
            )
    await standalone.aclose()
    await wrapped.images.aclose()


asyncio.run(main())
