"""Many concurrent keep-alive streams against one gateway process.

Starts ``mesh-images serve`` (one uvicorn worker, the ``local`` provider with a long latency so
that every stream stays in its ping phase), opens N streams from raw asyncio sockets, and prints:

- RSS of the server per open stream (after all streams got their ``processing`` chunk, minus the
  RSS after one warm-up request);
- ping lateness: how much later than the keep-alive interval each ping arrived after the previous
  frame of its stream, p50 and p99 over all pings in the measuring window;
- server CPU per 1,000 pings in that window.

Loopback only, bounded in time. Usage: ``python bench/streams.py [--streams 5000] [--interval 1]
[--window 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BODY = json.dumps(
    {"model": "local/sketch", "prompt": "bench", "size": "64x64", "stream": True}
).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(port: int) -> bytes:
    return (
        f"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


class Stream:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.arrivals: list[float] = []
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(request(port))
        await self.writer.drain()
        buffer = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            now = time.monotonic()
            buffer += data
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                if b'"processing"' in frame:
                    self.ready.set()
                self.arrivals.append(now)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def wait_until_up(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MESH_IMAGES_LOCAL_LATENCY": str(args.window * 4 + 120),
        "MESH_IMAGES_KEEPALIVE_INTERVAL": str(args.interval),
    }
    exe = shutil.which("mesh-images", path=str(Path(sys.executable).parent)) or "mesh-images"
    prefix = os.environ.get("BENCH_SERVER_PREFIX", "").split()  # e.g. a profiler
    return subprocess.Popen(
        [*prefix, exe, "serve", "--port", str(port), "--log-level", "warning"], env=env
    )


async def bench(
    args: argparse.Namespace, server: subprocess.Popen[bytes], port: int
) -> dict[str, float]:
    streams: list[Stream] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_until_up(port, time.monotonic() + 30)
        warm = Stream()
        warm_task = asyncio.create_task(warm.run(port))
        await asyncio.wait_for(warm.ready.wait(), 10)
        warm.close()
        await asyncio.gather(warm_task, return_exceptions=True)
        await asyncio.sleep(0.5)
        rss_before = rss_bytes(server.pid)
        for start in range(0, args.streams, 250):  # ramp up in steps the backlog can take
            batch = [Stream() for _ in range(min(250, args.streams - start))]
            streams += batch
            tasks += [asyncio.create_task(stream.run(port)) for stream in batch]
            await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in batch)), 60)
        await asyncio.sleep(args.interval * 2)  # let the first renders and pings settle
        rss_after = rss_bytes(server.pid)
        window_start, cpu_start = time.monotonic(), cpu_seconds(server.pid)
        await asyncio.sleep(args.window)
        window_end, cpu_end = time.monotonic(), cpu_seconds(server.pid)
        lateness: list[float] = []
        pings = 0
        for stream in streams:
            times = stream.arrivals
            for before, after in itertools.pairwise(times):
                if window_start <= after <= window_end:
                    pings += 1
                    lateness.append(max(0.0, after - before - args.interval))
        quantiles = statistics.quantiles(lateness, n=100) if len(lateness) > 1 else [0.0] * 99
        return {
            "streams": float(len(streams)),
            "rss_per_stream_kib": (rss_after - rss_before) / len(streams) / 1024,
            "rss_total_mib": rss_after / 2**20,
            "pings": float(pings),
            "lateness_p50_ms": quantiles[49] * 1000,
            "lateness_p99_ms": quantiles[98] * 1000,
            "cpu_ms_per_1000_pings": (cpu_end - cpu_start) / max(pings, 1) * 1e6,
        }
    finally:
        for stream in streams:
            stream.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=1.0, help="keep-alive interval, s")
    parser.add_argument("--window", type=float, default=10.0, help="measuring window, s")
    parser.add_argument("--write", metavar="FILE", help="also write the table into FILE")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, args.streams * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    port = free_port()
    server = start_server(args, port)
    try:
        result = asyncio.run(bench(args, server, port))
    finally:
        server.send_signal(signal.SIGINT)  # a graceful stop (and a profiler writes its output)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    table = render(args, result)
    print(table)
    if args.write:
        write_section(Path(args.write), table)


def render(args: argparse.Namespace, result: dict[str, float]) -> str:
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("uvicorn", "anyio", "uvloop", "httptools")
    )
    return "\n".join(
        [
            f"Keep-alive streams, one `mesh-images serve` process: {os.cpu_count()} CPUs, "
            f"keep-alive interval {args.interval:g} s, window {args.window:g} s, "
            f"Python {sys.version.split()[0]}, {versions}.",
            "",
            "| metric | value | target |",
            "|---|---|---|",
            f"| open streams | {result['streams']:.0f} | 5,000 |",
            f"| server RSS per open stream | {result['rss_per_stream_kib']:.1f} KiB | <= 30 KiB |",
            f"| server RSS total | {result['rss_total_mib']:.0f} MiB | |",
            f"| pings in window | {result['pings']:.0f} | |",
            f"| ping lateness p50 | {result['lateness_p50_ms']:.1f} ms | |",
            f"| ping lateness p99 | {result['lateness_p99_ms']:.1f} ms | < 250 ms |",
            f"| server CPU per 1,000 pings | {result['cpu_ms_per_1000_pings']:.1f} ms | |",
        ]
    )


def write_section(path: Path, table: str) -> None:
    """Replace this benchmark's section of ``path`` (between its markers) with ``table``."""
    begin, end = "<!-- bench/streams.py begin -->", "<!-- bench/streams.py end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n## Streams (`bench/streams.py`)\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
