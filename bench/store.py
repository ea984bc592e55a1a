"""What hosting a 2 MiB image costs: ``response_format: "url"`` (embedded store) vs ``b64_json``.

One instant OpenAI-shaped upstream (``bench/upstream.py``) answers one image of 2 MiB (as base64,
2.7 MiB); ``mesh-images serve`` in front of it stores ``url`` answers in the embedded store (a
temporary directory, capped at 256 MiB so that the run also pays for evictions). Load from
``wrk`` (Debian's package): c=1 for latency, c=8 for throughput, both paths interleaved in every
round, medians. Loopback only, bounded in time. With ``--write FILE`` the table goes into FILE.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from overhead import (
    HERE,
    Path_,
    Run,
    _median,
    free_port,
    gateway_cmd,
    gateway_env,
    running,
    versions,
    write_section,
    wrk,
)

IMAGE = re.compile(r"\d+-[0-9a-f]{32}\.png")
IMAGE_BYTES = 2 * 1024 * 1024
CAP = 256 * 1024 * 1024


def measure(args: argparse.Namespace) -> str:
    up, gw = free_port(), free_port()
    url = f"http://127.0.0.1:{gw}/v1/images/generations"
    body = {"model": "openai/gpt-image-2", "prompt": "bench"}
    paths = [Path_(fmt, url, {**body, "response_format": fmt}, {}) for fmt in ("b64_json", "url")]
    upstream = [sys.executable, str(HERE / "upstream.py"), "--port", str(up)]
    upstream += ["--images", "1", "--image-bytes", str(IMAGE_BYTES)]
    with tempfile.TemporaryDirectory() as directory:
        env = {
            **gateway_env(up),
            "MESH_IMAGES_STORE": "embedded",
            "MESH_IMAGES_STORE_DIR": directory,
            "MESH_IMAGES_STORE_MAX_BYTES": str(CAP),
        }
        with running(upstream, up, {}), running(gateway_cmd(gw), gw, env):
            for path in paths:
                wrk(path, 1, 1)  # warm up
            ones: dict[str, list[Run]] = {path.name: [] for path in paths}
            eights: dict[str, list[Run]] = {path.name: [] for path in paths}
            for _ in range(args.rounds):
                for path in paths:
                    ones[path.name].append(wrk(path, 1, args.seconds))
                    eights[path.name].append(wrk(path, 8, args.seconds))
        images = [entry for entry in Path(directory).iterdir() if IMAGE.fullmatch(entry.name)]
        stored = sum(entry.stat().st_size for entry in images)
    rows = []
    for path in paths:
        p50 = _median(ones[path.name], "p50_ms")
        added = p50 - _median(ones["b64_json"], "p50_ms")
        rows.append(
            f"| {path.name} | {_median(eights[path.name], 'rps'):,.0f} | {p50:.1f} ms | "
            f"{_median(ones[path.name], 'p99_ms'):.1f} ms | "
            f"{'-' if path.name == 'b64_json' else f'{added:+.1f} ms'} |"
        )
    return "\n".join(
        [
            f"One {IMAGE_BYTES // 2**20} MiB image per answer; c=1 and c=8 for {args.seconds:g} s "
            f"per path, {args.rounds} round(s), medians; store capped at {CAP // 2**20} MiB "
            f"({stored / 2**20:.0f} MiB on disk at the end); {versions()}.",
            "",
            "| response_format | req/s c=8 | p50 c=1 | p99 c=1 | added p50 c=1 |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="run length per path and load")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--write", metavar="FILE", help="also write the table into FILE")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    table = measure(args)
    print(table)
    if args.write:
        write_section(Path(args.write), "store.py", "store.py: hosted image URLs", table)


if __name__ == "__main__":
    main()
