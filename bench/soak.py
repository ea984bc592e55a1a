"""Soak: two gateway processes on one Redis, mixed JSON and streams, upstream faults, minutes.

Starts, on 127.0.0.1 only: a ``redis-server``; the OpenAI emulator (``tests/emulators/openai.py``)
in its own process; and two ``mesh-images serve`` processes in front of it that share the Redis
(rate limits) and nothing else. Then sends ``--rate`` requests per second, alternating between
the gateways (at most ``--concurrency`` at once), for ``--minutes``:

- 60 % JSON and 40 % streams, some with a fallback model;
- ``--fault-share`` (10 %) of them are *faulty*: the emulator answers each of their upstream
  calls with a random fault (429, 500, 503, dropped and reset connections, malformed JSON,
  truncated base64, an image cut on a base64 quantum, slow bodies, hangs); the others are
  *healthy*: the emulator answers them correctly;
- ``--limited-share`` of them use a gateway key with ``--rpm`` requests per minute, so that
  the limit is exercised across the two processes; the others use a key without limits.

Checks, and prints: every healthy request answered 200 (no 503: the circuit breaker must not
turn the faulty requests into an outage for the others); the limited key got exactly ``--rpm``
requests per full minute window across both processes, each with a distinct
``x-ratelimit-remaining-requests``; each gateway's RSS and open fds, sampled every 30 s, stay
flat. Ends the gateways with SIGTERM (a drain) and prints their exit status.

Usage: ``python bench/soak.py [--minutes 5] [--rate 200] [--concurrency 256] [--seed 1]``
(needs ``redis-server``).
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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh_images_asgi._access.keys import hash_key  # noqa: E402
from tests.support.procfs import rss_bytes  # noqa: E402

UPSTREAM_KEY = "sk-soak-upstream-0123456789"
OPEN_KEY = "mk-soak-open-0123456789abcdef"
LIMITED_KEY = "mk-soak-limited-0123456789abc"
GEN = "/v1/images/generations"
HEALTHY, FAULTY = "a healthy soak", "a faulty soak"
# Short deadlines so that hangs resolve within seconds; the breaker keeps its defaults.
GATEWAY_ENV = {
    "MESH_IMAGES_UPSTREAM_TIMEOUT": "6",
    "MESH_IMAGES_ATTEMPT_TIMEOUT": "2",
    "MESH_IMAGES_RETRY_BACKOFF": "0.1",
    "MESH_IMAGES_RETRY_BACKOFF_MAX": "1",
    "MESH_IMAGES_RETRY_AFTER_MAX": "2",
    "MESH_IMAGES_BULKHEAD_LIMIT": "96",
    "MESH_IMAGES_BULKHEAD_QUEUE": "512",
    "MESH_IMAGES_MAX_UPSTREAM_CONNECTIONS": "128",
    "MESH_IMAGES_KEEPALIVE_INTERVAL": "0.5",
    "MESH_IMAGES_DRAIN_TIMEOUT": "5",
    "MESH_IMAGES_RATE_LIMIT_FAIL_OPEN": "false",
}
CONFIG = '[models."openai/gpt-image-2"]\nfallbacks = ["openai/gpt-image-1.5"]\n'


# ---------------------------------------------------------------- the upstream (a subprocess)


def serve_upstream(seed: int) -> None:
    """Run the emulator until SIGTERM, faulting the faulty requests; print its base URL first."""
    from tests.emulators.openai import (
        Fault,
        OpenAIEmulator,
        overloaded,
        rate_limited,
        server_error,
    )

    rng = random.Random(seed)
    emulator = OpenAIEmulator(api_key=UPSTREAM_KEY)
    emulator.latency = 0.1  # every answer; a slow body trickles over it
    faults = [
        rate_limited(retry_after_ms="100"),
        overloaded(),
        server_error(),
        Fault.DROP,
        Fault.TRUNCATED,
        Fault.MALFORMED,
        Fault.BAD_BASE64,
        Fault.CUT_IMAGE,
        Fault.SLOW_BODY,
        Fault.HANG,
    ]

    def chaos(body: Any) -> Any:
        if len(emulator.requests) > 1000:
            emulator.requests.clear()
        faulty = isinstance(body, dict) and body.get("prompt") == FAULTY
        return rng.choice(faults) if faulty else None

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

    def __init__(self, urls: list[str], args: argparse.Namespace) -> None:
        self.urls = urls
        self.args = args
        self.rng = random.Random(args.seed)
        self.outcomes: Counter[str] = Counter()
        self.sent = 0
        self.admitted: dict[int, list[int]] = defaultdict(list)
        """Per rate-limit window (its end, in whole minutes): each admitted request's remaining."""
        self.refused: Counter[int] = Counter()

    async def one(self, clients: list[Any]) -> None:
        rng, args = self.rng, self.args
        self.sent += 1
        client = clients[self.sent % len(clients)]
        stream = rng.random() < 0.4
        limited = rng.random() < args.limited_share
        faulty = not limited and rng.random() < args.fault_share
        body: dict[str, Any] = {
            "model": "openai/gpt-image-2",
            "prompt": FAULTY if faulty else HEALTHY,
            "size": "1024x1024",
            "stream": stream,
        }
        if rng.random() < 0.3:
            body["models"] = ["openai/gpt-image-1.5"]
        key = LIMITED_KEY if limited else OPEN_KEY
        kind = "limited" if limited else "faulty" if faulty else "healthy"
        try:
            response = await client.post(
                GEN, json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
            )
        except Exception as exc:  # every client-side failure is an outcome
            self.outcomes[f"{kind}: client {type(exc).__name__}"] += 1
            return
        label = outcome(response.status_code, response.text, stream)
        self.outcomes[f"{kind}: {label}"] += 1
        if limited:
            self._count_limit(response)

    def _count_limit(self, response: Any) -> None:
        reset = response.headers.get("x-ratelimit-reset-requests")
        if response.status_code == 429 and "rate_limit_exceeded" in response.text:
            seconds = float(response.headers.get("retry-after", "0"))
            self.refused[round((time.time() + seconds) / 60)] += 1
        elif reset is not None:
            seconds = _seconds(reset)
            window = round((time.time() + seconds) / 60)
            remaining = int(response.headers["x-ratelimit-remaining-requests"])
            self.admitted[window].append(remaining)


def _seconds(duration: str) -> float:
    """The gateway's reset duration (``45s``, ``1m5s``, ``3h0m12s``) in seconds."""
    total, number = 0, ""
    for char in duration:
        if char.isdigit():
            number += char
        else:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
    return float(total)


def outcome(status: int, text: str, stream: bool) -> str:
    if stream and status == 200:
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        last = events[-1] if events else {}
        if "error" in last:
            error = last["error"]
            suffix = f"/{error['provider_code']}" if error.get("provider_code") else ""
            return f"200 stream, error event {error['code']}{suffix}"
        done = text.endswith("data: [DONE]\n\n")
        return "200 stream, completed" if last.get("status") == "completed" and done else "200 ?"
    if status == 200:
        return "200"
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} (not an envelope)"
    code = error.get("code")
    provider_code = error.get("provider_code")
    return f"{status} {code}" + (f"/{provider_code}" if provider_code else "")


async def drive(load: Load, seconds: float, rate: float, concurrency: int) -> float:
    """Send for ``seconds``; the rate actually achieved."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = [httpx.AsyncClient(base_url=url, limits=limits) for url in load.urls]
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def run() -> None:
        try:
            await load.one(clients)
        finally:
            slots.release()

    sent_before = load.sent
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        tick += 1
        await asyncio.sleep(max(0.0, start + tick / rate - time.monotonic()))
        await slots.acquire()  # the rate is bounded; so is the number in flight
        task = asyncio.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    took = time.monotonic() - start
    await asyncio.gather(*tasks)
    for client in clients:
        await client.aclose()
    return (load.sent - sent_before) / took


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


def snapshot(pids: list[int]) -> list[tuple[float, int]]:
    return [(round(rss_bytes(pid) / 2**20, 1), open_fds(pid)) for pid in pids]


async def sample(pids: list[int], every: float, into: list[list[tuple[float, int]]]) -> None:
    while True:
        await asyncio.sleep(every)
        into.append(snapshot(pids))


async def soak(load: Load, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    await drive(load, 10, args.rate, args.concurrency)  # warm-up
    load.outcomes.clear()
    load.sent = 0
    load.admitted.clear()
    load.refused.clear()
    await asyncio.sleep(2)
    samples = [snapshot(pids)]
    sampler = asyncio.create_task(sample(pids, 30, samples))
    began = time.monotonic()
    rate = await drive(load, args.minutes * 60, args.rate, args.concurrency)
    took = time.monotonic() - began
    sampler.cancel()
    await asyncio.sleep(2)  # let cancelled upstream calls and idle connections settle
    samples.append(snapshot(pids))
    return {"took": took, "rate": rate, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--fault-share", type=float, default=0.1)
    parser.add_argument("--limited-share", type=float, default=0.05)
    parser.add_argument("--rpm", type=int, default=300, help="the limited key's rpm")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.seed)
        return
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        sys.exit("soak: needs redis-server (apt-get install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="mesh-soak-"))
    redis_port = free_port()
    redis = subprocess.Popen(
        [redis_binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--upstream", "--seed", str(args.seed)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert upstream.stdout is not None
    upstream_url = upstream.stdout.readline().strip()
    (workdir / "soak.toml").write_text(CONFIG)
    keys = [
        {"hash": hash_key(OPEN_KEY), "label": "open"},
        {"hash": hash_key(LIMITED_KEY), "label": "limited", "rpm": args.rpm},
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MESH_IMAGES_", "OPENAI_", "GOOGLE_"))
    }
    env |= GATEWAY_ENV | {
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": upstream_url,
        "MESH_IMAGES_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "MESH_IMAGES_API_KEYS": json.dumps(keys),
    }
    exe = shutil.which("mesh-images", path=str(Path(sys.executable).parent)) or "mesh-images"
    gateways, urls, logs = [], [], []
    for index in range(2):
        port = free_port()
        logs.append((workdir / f"gateway-{index}.log").open("w"))
        command = [exe, "serve", "--port", str(port), "--config", str(workdir / "soak.toml")]
        gateways.append(
            subprocess.Popen(
                [*command, "--log-level", "warning"],
                env=env,
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    load = Load(urls, args)
    statuses: list[int | str] = []
    try:
        for url in urls:
            asyncio.run(wait_until_up(url, time.monotonic() + 30))
        result = asyncio.run(soak(load, args, [g.pid for g in gateways]))
    finally:
        for gateway in gateways:
            gateway.send_signal(signal.SIGTERM)
        for gateway in gateways:
            try:
                statuses.append(gateway.wait(30))
            except subprocess.TimeoutExpired:
                gateway.kill()
                statuses.append("killed after 30 s")
        upstream.terminate()
        upstream.wait(10)
        redis.terminate()
        redis.wait(10)
        for log in logs:
            log.close()
    report(args, load, result, statuses, workdir)


def report(
    args: argparse.Namespace,
    load: Load,
    result: dict[str, Any],
    statuses: list[int | str],
    workdir: Path,
) -> None:
    took = result["took"]
    print(
        f"soak: {took / 60:.1f} min, asked {args.rate:g} req/s, sent {result['rate']:.1f} req/s "
        f"(at most {args.concurrency} at once), 2 gateways, one Redis; {load.sent} requests"
    )
    print("outcomes (healthy / faulty / limited requests):")
    for label, count in sorted(load.outcomes.items()):
        print(f"  {count:7d}  {label}")
    healthy_503 = sum(n for label, n in load.outcomes.items() if label.startswith("healthy: 503"))
    fine = ("healthy: 200", "healthy: 200 stream, completed")
    healthy_bad = sum(
        n
        for label, n in load.outcomes.items()
        if label.startswith("healthy:") and label not in fine
    )
    print(f"healthy requests answered 503: {healthy_503}; not 200 at all: {healthy_bad}")
    windows = sorted(set(load.admitted) | set(load.refused))
    print(
        f"limited key (rpm {args.rpm}), by minute window: admitted / refused / distinct remaining"
    )
    for window in windows:
        admitted = load.admitted[window]
        print(
            f"  {time.strftime('%H:%M', time.gmtime(window * 60))}  {len(admitted):5d} / "
            f"{load.refused[window]:5d} / {len(set(admitted)) == len(admitted)}"
        )
    print("gateways' RSS MiB and open fds, every 30 s:")
    for row in result["samples"]:
        print("  " + "   ".join(f"{rss:6.1f} MiB {fds:4d} fds" for rss, fds in row))
    print(f"gateways' exit status after SIGTERM: {statuses}; logs in {workdir}")


if __name__ == "__main__":
    main()
