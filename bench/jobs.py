"""Async jobs end to end: jobs per second (submit to succeeded) and the latency they add.

One instant OpenAI-shaped upstream (``bench/upstream.py``), model ``openai/gpt-image-2``, and:

    embedded   one ``mesh-images serve`` process, the in-process queue
    redis      two ``mesh-images serve`` processes sharing a ``redis-server`` of the bench's own;
               jobs are submitted to both and polled on the other one

Throughput: ``--jobs`` jobs submitted by ``--concurrency`` clients, each submitting one job and
polling it every ``--poll`` seconds until it succeeded, then the next; jobs/s is the jobs over
the wall time. Added latency: one client, one job at a time, the median time from submission to
the poll that saw it succeeded, against the median synchronous ``POST /v1/images/generations``
on the same process (the poll interval is part of what a client sees, and is in the number).
The client is aiohttp (httpx's pool tops out near 100 req/s at 32 concurrent requests on this
machine, below the gateway). Loopback only, bounded in time. Tables are printed and, with
``--write FILE``, written into FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from overhead import free_port, running, write_section  # noqa: E402

KEY = "sk-bench-0123456789"
TIMEOUT = aiohttp.ClientTimeout(total=60)
BODY = {"model": "openai/gpt-image-2", "prompt": "a bench", "quality": "low"}


@contextmanager
def gateways(upstream: int, count: int, redis: str | None) -> Iterator[list[str]]:
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1",
        "MESH_IMAGES_JOB_QUEUE_SIZE": "100000",
        "MESH_IMAGES_JOB_CONCURRENCY": "32",
    }
    if redis is not None:
        env["MESH_IMAGES_REDIS_URL"] = redis
        env["MESH_IMAGES_JOB_REDIS_PREFIX"] = f"bench-jobs:{secrets.token_hex(4)}"
    with ExitStack() as stack:
        urls = []
        for _ in range(count):
            port = free_port()
            command = [sys.executable, "-m", "mesh_images_asgi.cli", "serve", "--port", str(port)]
            stack.enter_context(running([*command, "--log-level", "warning"], port, env))
            urls.append(f"http://127.0.0.1:{port}")
        yield urls


async def one_job(
    client: aiohttp.ClientSession, submit_to: str, poll_on: str, poll: float
) -> float:
    started = time.perf_counter()
    async with client.post(f"{submit_to}/v1/async/images/generations", json=BODY) as answer:
        answer.raise_for_status()
        job = (await answer.json())["id"]
    while True:
        async with client.get(f"{poll_on}/v1/async/jobs/{job}") as answer:
            state = await answer.json()
        if state["status"] == "succeeded":
            return time.perf_counter() - started
        if state["status"] != "queued" and state["status"] != "running":
            raise RuntimeError(f"job {job} ended {state['status']}: {state.get('error')}")
        await asyncio.sleep(poll)


async def throughput(urls: list[str], jobs: int, concurrency: int, poll: float) -> float:
    counter = iter(range(jobs))
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as client:

        async def worker() -> None:
            for index in counter:
                submit_to = urls[index % len(urls)]
                await one_job(client, submit_to, urls[(index + 1) % len(urls)], poll)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return jobs / (time.perf_counter() - started)


async def latencies(url: str, samples: int, poll: float) -> tuple[float, float]:
    """Median seconds of a synchronous generation and of a job (one at a time)."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        sync, job = [], []
        for _ in range(samples):
            started = time.perf_counter()
            async with client.post(f"{url}/v1/images/generations", json=BODY) as answer:
                answer.raise_for_status()
                await answer.read()
            sync.append(time.perf_counter() - started)
            job.append(await one_job(client, url, url, poll))
        return statistics.median(sync), statistics.median(job)


def measure(args: argparse.Namespace) -> str:
    rows = []
    with ExitStack() as stack:
        up = free_port()
        upstream = [sys.executable, str(HERE / "upstream.py"), "--port", str(up)]
        stack.enter_context(running(upstream, up, {}))
        redis_port = free_port()
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            sys.exit("redis-server is not installed: apt-get install redis-server")
        command = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        stack.enter_context(running(command, redis_port, {}))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        for name, count, redis in (("embedded", 1, None), ("redis", 2, redis_url)):
            with gateways(up, count, redis) as urls:
                asyncio.run(latencies(urls[0], 5, args.poll))  # warm up
                rate = asyncio.run(throughput(urls, args.jobs, args.concurrency, args.poll))
                sync, job = asyncio.run(latencies(urls[0], args.samples, args.poll))
            rows.append(
                f"| {name} | {count} | {rate:,.0f} | {sync * 1000:.1f} ms | {job * 1000:.1f} ms "
                f"| +{(job - sync) * 1000:.1f} ms |"
            )
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("mesh-images-asgi", "uvicorn", "redis")
    )
    header = (
        f"{args.jobs} jobs by {args.concurrency} clients, poll every {args.poll * 1000:g} ms; "
        f"latency: medians of {args.samples} one at a time; {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {versions}.\n\n"
        "| queue | processes | jobs/s | sync p50 | job p50 (submit to seen succeeded) | added |\n"
        "|---|---|---|---|---|---|"
    )
    return header + "\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--poll", type=float, default=0.01, help="seconds between polls")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--write", metavar="FILE", help="also write the table into FILE")
    args = parser.parse_args()
    table = measure(args)
    print(table)
    if args.write:
        write_section(Path(args.write), "jobs.py", "jobs.py: async jobs", table)


if __name__ == "__main__":
    main()
