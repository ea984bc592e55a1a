"""Soak: the gateway under mixed upstream and client faults, at a bounded rate, for minutes.

Starts, on 127.0.0.1 only, the OpenAI emulator (``tests/emulators/openai.py``) answering each
request with a random fault (429, 500, 503, dropped and reset connections, malformed JSON,
truncated base64, slow bodies, hangs) and ``mesh-images serve`` in front of it, each in its own
process. Then sends ``--rate`` requests per second (at most ``--concurrency`` at once) for
``--minutes``: JSON and streams, with and without fallbacks, with a client key the upstream
refuses (BYOK fallback), the embedded ``local`` model, clients that give up early, garbage bodies.

Prints the number of requests, the outcomes by status and error code, and the gateway's RSS,
open file descriptors and connections to the upstream at the start (after a warm-up) and at the
end, then stops the gateway with SIGINT (a graceful shutdown) and prints its exit status.

Usage: ``python bench/soak.py [--minutes 10] [--rate 20] [--concurrency 48] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.procfs import connections_to, rss_bytes  # noqa: E402

UPSTREAM_KEY = "sk-soak-upstream-0123456789"
GEN = "/v1/images/generations"
# The gateway's knobs for the soak: short deadlines so that hangs resolve within seconds.
GATEWAY_ENV = {
    "MESH_IMAGES_UPSTREAM_TIMEOUT": "4",
    "MESH_IMAGES_ATTEMPT_TIMEOUT": "1.5",
    "MESH_IMAGES_RETRY_BACKOFF": "0.1",
    "MESH_IMAGES_RETRY_BACKOFF_MAX": "1",
    "MESH_IMAGES_RETRY_AFTER_MAX": "2",
    "MESH_IMAGES_BREAKER_THRESHOLD": "8",
    "MESH_IMAGES_BREAKER_COOLDOWN": "2",
    "MESH_IMAGES_BULKHEAD_LIMIT": "16",
    "MESH_IMAGES_BULKHEAD_QUEUE": "32",
    "MESH_IMAGES_MAX_UPSTREAM_CONNECTIONS": "32",
    "MESH_IMAGES_KEEPALIVE_INTERVAL": "0.5",
    "MESH_IMAGES_LOCAL_LATENCY": "0.05",
    "MESH_IMAGES_DRAIN_TIMEOUT": "5",
}
CONFIG = '[models."openai/gpt-image-2"]\nfallbacks = ["openai/gpt-image-1.5"]\n'


# ---------------------------------------------------------------- the upstream (a subprocess)


def serve_upstream(seed: int) -> None:
    """Run the emulator with random faults until SIGTERM; print its base URL first."""
    from tests.emulators.openai import (
        Fault,
        OpenAIEmulator,
        overloaded,
        rate_limited,
        server_error,
    )

    rng = random.Random(seed)
    emulator = OpenAIEmulator(api_key=UPSTREAM_KEY)
    emulator.latency = 0.2  # every answer; a slow body trickles over it
    faults: list[tuple[Any, float]] = [
        (None, 0.58),
        (rate_limited(retry_after_ms="100"), 0.08),
        (overloaded(), 0.08),
        (server_error(), 0.05),
        (Fault.DROP, 0.04),
        (Fault.TRUNCATED, 0.03),
        (Fault.MALFORMED, 0.03),
        (Fault.BAD_BASE64, 0.03),
        (Fault.SLOW_BODY, 0.05),
        (Fault.HANG, 0.03),
    ]
    answers, weights = zip(*faults, strict=True)

    def chaos(body: Any) -> Any:
        if len(emulator.requests) > 1000:
            emulator.requests.clear()
        return rng.choices(answers, weights)[0]

    emulator.fault_for = chaos
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with emulator.serve() as url:
        print(url, flush=True)
        while not stop:
            time.sleep(0.2)


# ---------------------------------------------------------------- the load


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Load:
    """The requests the soak sends, and their outcomes."""

    def __init__(self, base_url: str, rng: random.Random) -> None:
        self.base_url = base_url
        self.rng = rng
        self.outcomes: Counter[str] = Counter()
        self.routing: Counter[str] = Counter()
        self.sent = 0

    async def one(self, client: Any) -> None:
        kind = self.rng.choices(
            ["json", "fallbacks", "stream", "byok", "local", "gone", "garbage"],
            [35, 15, 20, 10, 5, 10, 5],
        )[0]
        body: dict[str, Any] = {"model": "openai/gpt-image-2", "prompt": "soak", "size": "auto"}
        headers: dict[str, str] = {}
        timeout = 30.0
        if kind == "fallbacks":
            body["models"] = ["openai/gpt-image-1.5", "local/sketch"]
        elif kind == "stream":
            body["stream"] = True
        elif kind == "byok":
            headers["X-OpenAI-Key"] = "sk-client-key-the-upstream-refuses"
        elif kind == "local":
            body = {"model": "local/sketch", "prompt": "soak", "size": "64x64"}
        elif kind == "gone":
            timeout = 0.3  # gives up while the gateway waits or retries
        self.sent += 1
        try:
            if kind == "garbage":
                response = await client.post(GEN, content=b'{"prompt": "soak",', timeout=timeout)
            else:
                response = await client.post(GEN, json=body, headers=headers, timeout=timeout)
        except Exception as exc:  # every client-side failure is an outcome
            label = "client gave up (as planned)" if kind == "gone" else type(exc).__name__
            self.outcomes[f"client: {label}"] += 1
            return
        self.outcomes[outcome(response.status_code, response.text, kind == "stream")] += 1
        attempts = response.headers.get("x-mesh-routing-attempts")
        if attempts is not None and kind != "stream":
            self.routing[f"{attempts} attempt(s)"] += 1
        if response.headers.get("x-mesh-routing-fallback") == "true":
            self.routing["served by a fallback"] += 1
        if response.headers.get("x-byok-fallback-triggered") == "true":
            self.routing["BYOK fallback to the gateway's key"] += 1


def outcome(status: int, text: str, stream: bool) -> str:
    if stream:
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        last = events[-1] if events else {}
        if "error" in last:
            error = last["error"]
            suffix = f"/{error['provider_code']}" if error.get("provider_code") else ""
            return f"200 stream, error event {error['code']}{suffix}"
        return "200 stream, completed" if last.get("status") == "completed" else "200 stream, ?"
    if status == 200:
        return "200"
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} (not an envelope)"
    code = error.get("code")
    provider_code = error.get("provider_code")
    return f"{status} {code}" + (f"/{provider_code}" if provider_code else "")


async def drive(load: Load, seconds: float, rate: float, concurrency: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=load.base_url, limits=limits) as client:
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def run() -> None:
            try:
                await load.one(client)
            finally:
                slots.release()

        start = time.monotonic()
        tick = 0
        while time.monotonic() - start < seconds:
            tick += 1
            await asyncio.sleep(max(0.0, start + tick / rate - time.monotonic()))
            await slots.acquire()  # the rate is bounded; so is the number in flight
            task = asyncio.create_task(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)


async def wait_until_up(base_url: str, deadline: float) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(base_url + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            await asyncio.sleep(0.1)


def snapshot(pid: int, upstream_port: int) -> dict[str, Any]:
    return {
        "rss_mib": round(rss_bytes(pid) / 2**20, 1),
        "fds": open_fds(pid),
        "upstream_connections": dict(connections_to({upstream_port}, pid)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.seed)
        return

    upstream = subprocess.Popen(
        [sys.executable, __file__, "--upstream", "--seed", str(args.seed)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert upstream.stdout is not None
    upstream_url = upstream.stdout.readline().strip()
    upstream_port = int(upstream_url.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mesh-soak-"))
    (workdir / "soak.toml").write_text(CONFIG)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MESH_IMAGES_", "OPENAI_", "GOOGLE_"))
    }
    env |= GATEWAY_ENV | {"OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_BASE_URL": upstream_url}
    exe = shutil.which("mesh-images", path=str(Path(sys.executable).parent)) or "mesh-images"
    log = (workdir / "gateway.log").open("w")
    gateway = subprocess.Popen(
        [
            exe,
            "serve",
            "--port",
            str(port),
            "--config",
            str(workdir / "soak.toml"),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    rng = random.Random(args.seed)
    try:
        asyncio.run(wait_until_up(base_url, time.monotonic() + 30))
        asyncio.run(drive(Load(base_url, rng), 5, args.rate, args.concurrency))  # warm-up
        time.sleep(2)
        start = snapshot(gateway.pid, upstream_port)
        load = Load(base_url, rng)
        began = time.monotonic()
        asyncio.run(drive(load, args.minutes * 60, args.rate, args.concurrency))
        took = time.monotonic() - began
        time.sleep(2)  # let cancelled upstream calls and idle connections settle
        end = snapshot(gateway.pid, upstream_port)
    finally:
        gateway.send_signal(signal.SIGINT)
        try:
            exit_status: int | str = gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            exit_status = "killed after 30 s"
        upstream.terminate()
        upstream.wait(10)
        log.close()
    report(args, load, took, start, end, exit_status, workdir / "gateway.log")


def report(
    args: argparse.Namespace,
    load: Load,
    took: float,
    start: dict[str, Any],
    end: dict[str, Any],
    exit_status: int | str,
    log: Path,
) -> None:
    print(f"soak: {took / 60:.1f} min at {args.rate:g} req/s (at most {args.concurrency} at once)")
    print(f"requests: {load.sent} ({load.sent / took:.1f}/s)")
    print("outcomes:")
    for label, count in sorted(load.outcomes.items(), key=lambda item: -item[1]):
        print(f"  {count:7d}  {label}")
    print("routing (JSON answers):")
    for label, count in sorted(load.routing.items()):
        print(f"  {count:7d}  {label}")
    for name, value in (("start", start), ("end", end)):
        print(
            f"gateway at {name}: RSS {value['rss_mib']} MiB, {value['fds']} open fds, "
            f"connections to the upstream {value['upstream_connections'] or 'none'}"
        )
    print(f"gateway exit status after SIGINT: {exit_status}; its log: {log}")


if __name__ == "__main__":
    main()
