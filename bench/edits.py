"""What an edit upload costs the gateway: added latency and peak RSS per in-flight request.

Starts ``bench/upstream.py`` (an instant OpenAI-shaped upstream that answers any POST) and
``mesh-images serve`` in front of it, builds a ~4 MiB PNG (noise: it does not compress), and
measures:

- added latency: the median time of ``POST /v1/images/edits`` (multipart: the image, a prompt,
  the model) through the gateway, minus the median time of the same multipart POST sent straight
  to the upstream; sequential requests on one keep-alive connection each way;
- peak RSS per in-flight request: ``--concurrency`` uploads sent at once, several rounds; the
  gateway's peak RSS (``VmHWM``) over its RSS after a warm-up, divided by the uploads in flight.

Loopback only, bounded in time. Usage: ``python bench/edits.py [--requests 30] [--concurrency 16]
[--rounds 3] [--write docs/benchmarks.md]``.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.overhead import free_port, wait_port, write_section

BIN = Path(sys.executable).parent
KEY = "sk-bench"
MIB = 1024 * 1024


def upload_png(target: int = 4 * MIB) -> bytes:
    """A PNG of about ``target`` bytes: RGB noise, which PNG cannot compress."""
    edge = int((target / 3) ** 0.5)
    noise = random.Random(7).randbytes(edge * edge * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (edge, edge), noise).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def post(client: httpx.Client, url: str, png: bytes) -> float:
    started = time.perf_counter()
    response = client.post(
        url,
        data={"model": "openai/gpt-image-2", "prompt": "bench"},
        files=[("image", ("photo.png", png, "image/png"))],
        headers={"authorization": f"Bearer {KEY}"},
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return elapsed


def median_ms(url: str, png: bytes, requests: int) -> float:
    with httpx.Client(timeout=60) as client:
        post(client, url, png)  # connect and warm up
        return statistics.median(post(client, url, png) for _ in range(requests)) * 1000


def concurrent_round(url: str, png: bytes, concurrency: int) -> None:
    barrier = threading.Barrier(concurrency)
    errors: list[BaseException] = []

    def one() -> None:
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            try:
                post(client, url, png)
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def bench(args: argparse.Namespace) -> str:
    png = upload_png()
    up, gw = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "bench/upstream.py", "--port", str(up), "--image-bytes", "65536"],
        stdout=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{up}/v1",
        "MESH_IMAGES_MAX_EDIT_BODY_BYTES": str(256 * MIB),
    }
    gateway = subprocess.Popen(
        [str(BIN / "mesh-images"), "serve", "--port", str(gw), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(up, upstream, 20)
        wait_port(gw, gateway, 20)
        direct = median_ms(f"http://127.0.0.1:{up}/v1/images/edits", png, args.requests)
        through = median_ms(f"http://127.0.0.1:{gw}/v1/images/edits", png, args.requests)
        baseline = status_kib(gateway.pid, "VmRSS")
        for _ in range(args.rounds):
            concurrent_round(f"http://127.0.0.1:{gw}/v1/images/edits", png, args.concurrency)
        peak = status_kib(gateway.pid, "VmHWM")
    finally:
        for process in (gateway, upstream):
            process.terminate()
            process.wait(10)
    per_request = (peak - baseline) / args.concurrency / 1024
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("uvicorn", "python-multipart", "pillow")
    )
    return "\n".join(
        [
            f"One {len(png) / MIB:.2f} MiB PNG per edit (multipart) to `openai/gpt-image-2` on "
            f"an instant upstream; {args.requests} sequential requests each way (medians), then "
            f"{args.rounds} rounds of {args.concurrency} concurrent uploads; "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {versions}.",
            "",
            "| metric | value |",
            "|---|---|",
            f"| straight to the upstream, p50 | {direct:.1f} ms |",
            f"| through the gateway, p50 | {through:.1f} ms |",
            f"| added by the gateway, p50 | {through - direct:+.1f} ms |",
            f"| gateway RSS after warm-up | {baseline / 1024:.0f} MiB |",
            f"| gateway peak RSS, {args.concurrency} uploads in flight | {peak / 1024:.0f} MiB |",
            f"| peak RSS per in-flight upload | {per_request:.1f} MiB "
            f"({per_request * MIB / len(png):.1f}x the upload) |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    args = parser.parse_args()
    table = bench(args)
    print(table)
    if args.write is not None:
        write_section(args.write, "edits.py", "edits.py: a 4 MiB upload", table)


if __name__ == "__main__":
    main()
