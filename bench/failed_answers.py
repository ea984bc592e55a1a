"""Memory after failed upstream answers, with and without the standalone server's GC tuning.

Issue 17 item 9: each failed answer (4 MB of invalid base64) was kept alive by a reference cycle
(error -> traceback -> routing frame -> run record -> error), which only the cyclic garbage
collector frees, and ``mesh-images serve`` tunes that collector down (``gc.freeze()``, generation
0 every 10,000 allocations). This starts an upstream on 127.0.0.1 that answers prompt ``broken``
with 200 and ``--mib`` MiB of invalid base64 and anything else with a small valid image, then a
``mesh-images serve`` (with its GC tuning, or with ``--no-tuning`` without it) in front of it,
and measures the gateway's RSS: idle, after ``--failed`` broken answers, and after ``--healthy``
healthy requests.

Usage: ``python bench/failed_answers.py [--no-tuning] [--failed 200] [--healthy 3000]``.
The code measured is the one importable from the current directory (``cd`` elsewhere to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.live import serve  # noqa: E402
from tests.support.procfs import rss_bytes  # noqa: E402

KEY = "sk-bench-0123456789"
PNG = base64.b64encode(
    b"\x89PNG\r\n\x1a\n" + bytes(64) + b"\x00\x00\x00\x00IEND\xaeB`\x82"
).decode()
GATEWAY = """
import sys
import mesh_images_asgi.cli as cli
if sys.argv[1] == "off":
    cli._tune_gc = lambda: None
sys.exit(cli.main(sys.argv[2:]))
"""


def upstream(mib: int) -> Any:
    broken = json.dumps({"created": 1, "data": [{"b64_json": "A" * (mib * 2**20) + "A=="}]})
    healthy = json.dumps({"created": 1, "data": [{"b64_json": PNG}]})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = (broken if json.loads(raw).get("prompt") == "broken" else healthy).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def send(url: str, prompt: str, count: int, concurrency: int) -> None:
    import httpx

    body = {"model": "openai/gpt-image-2", "prompt": prompt, "response_format": "b64_json"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                await client.post("/v1/images/generations", json=body)

        await asyncio.gather(*(one() for _ in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-tuning", action="store_true")
    parser.add_argument("--failed", type=int, default=200)
    parser.add_argument("--healthy", type=int, default=3000)
    parser.add_argument("--mib", type=int, default=4)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    with serve(upstream(args.mib), lifespan="off") as upstream_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OPENAI_"))},
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": upstream_url + "/v1",
            "MESH_IMAGES_RETRIES_PER_MODEL": "0",
        }
        tuning = "off" if args.no_tuning else "on"
        command = [sys.executable, "-c", GATEWAY, tuning, "serve", "--port", str(args.port)]
        gateway = subprocess.Popen([*command, "--log-level", "error"], env=env)
        url = f"http://127.0.0.1:{args.port}"
        try:
            time.sleep(3)
            asyncio.run(send(url, "ok", 50, 8))  # warm-up
            idle = rss_bytes(gateway.pid)
            asyncio.run(send(url, "broken", args.failed, 8))
            after_failed = rss_bytes(gateway.pid)
            asyncio.run(send(url, "ok", args.healthy, 8))
            after_healthy = rss_bytes(gateway.pid)
        finally:
            gateway.terminate()
            gateway.wait(30)
    mib = 2**20
    print(
        f"GC tuning {tuning}: RSS idle {idle / mib:.1f} MiB, after {args.failed} failed answers "
        f"of {args.mib} MiB {after_failed / mib:.1f} MiB, after {args.healthy} healthy requests "
        f"{after_healthy / mib:.1f} MiB"
    )


if __name__ == "__main__":
    main()
