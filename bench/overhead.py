"""What the gateway costs on the request path, side by side with the ceiling and with LiteLLM.

Paths, all against one instant OpenAI-shaped upstream (``bench/upstream.py``) on 127.0.0.1:

    direct     the upstream itself
    gateway    ``mesh-images serve`` (one uvicorn worker), model ``openai/gpt-image-2``
    forwarder (aiohttp)
               a bare pure-ASGI aiohttp forwarder on the same server (``bench/forwarder.py``):
               the ceiling for a Python gateway on aiohttp, the gateway's client; ratios are to it
    forwarder (pyreqwest), forwarder (httpx-aiohttp), forwarder (httpx)
               the same forwarder on the other candidate upstream clients (the ``bench`` extra)
    litellm    LiteLLM's proxy from its own virtual environment (``bench/.litellm``), if present
    gateway (baseline)
               with ``--baseline DIR``: the gateway from another checkout of this repository
               (``git worktree add DIR REV``), in the same run, to compare two revisions

Load comes from ``wrk`` (Debian's package), fixed concurrency and duration, paths interleaved in
every round, every other round backwards (so ``--rounds`` should be even), medians over the
rounds. A second part, ``payload``, sends answers of 4 images of 2 MB of base64 each through the
gateway and reports the added latency and the gateway's peak RSS per in-flight request. Tables are
printed and, with ``--write FILE``, written into FILE. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
LITELLM = HERE / ".litellm" / "bin" / "litellm"
KEY = "sk-bench-0123456789"
LITELLM_MASTER = "sk-litellm-master-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {seconds} s")


@contextmanager
def running(
    cmd: list[str], port: int, env: dict[str, str], seconds: float = 30, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd
    )
    try:
        wait_port(port, process, seconds)
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Path_:
    name: str
    url: str
    body: Mapping[str, object]
    headers: dict[str, str]


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match[1]) * _UNITS[match[2]]


def wrk(path: Path_, connections: int, seconds: float) -> Run:
    lua = "\n".join(
        [
            'wrk.method = "POST"',
            f"wrk.body = {json.dumps(json.dumps(path.body))}",
            'wrk.headers["Content-Type"] = "application/json"',
            *(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in path.headers.items()),
        ]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--latency",
                "--timeout",
                "10s",  # plain httpx's forwarder has a p99 near wrk's default of 2 s
                "-s",
                script.name,
                path.url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{path.name}: errors under load:\n{out}")
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (p50 and p99 and rps):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return Run(float(rps[1]), _ms(p50[1]), _ms(p99[1]))


def ordered(paths: list[Path_], round_: int) -> list[Path_]:
    """The paths in round ``round_``'s order: every other round runs them backwards, and each
    pair of rounds starts one path further on.

    A path's place in a round moves its numbers: with the gateway and the baseline gateway side
    by side in a fixed order, whichever ran first in every round lost 5 to 7% of its rate, and
    swapping them swapped the loss. Over an even number of rounds, every two paths run in each
    order equally often, and no path always follows the same one."""
    start = (round_ // 2) % len(paths)
    order = paths[start:] + paths[:start]
    return order if round_ % 2 == 0 else order[::-1]


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def gateway_cmd(port: int) -> list[str]:
    return [str(BIN / "mesh-images"), "serve", "--port", str(port), "--log-level", "warning"]


def baseline_cmd(port: int) -> list[str]:
    """The gateway of the checkout it is started in (its working directory comes first on the
    module path, before this one's editable install)."""
    command = [sys.executable, "-m", "mesh_images_asgi.cli", "serve", "--port", str(port)]
    return [*command, "--log-level", "warning"]


def forwarder_cmd(app: str, port: int) -> list[str]:
    command = [str(BIN / "uvicorn"), f"bench.forwarder:{app}", "--port", str(port)]
    return [*command, "--log-level", "warning", "--no-access-log"]


def gateway_env(upstream: int) -> dict[str, str]:
    return {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1"}


REFERENCE = "forwarder (aiohttp)"
FORWARDERS = {
    REFERENCE: "app",
    "forwarder (pyreqwest)": "app_pyreqwest",
    "forwarder (httpx-aiohttp)": "app_httpx_aiohttp",
    "forwarder (httpx)": "app_httpx",
}
"""Each candidate upstream client's bare forwarder (``bench/forwarder.py``) and its app."""


def overhead(args: argparse.Namespace) -> str:
    up, gw, ll = free_port(), free_port(), free_port()
    gateway_body = {
        "model": "openai/gpt-image-2",
        "prompt": "bench",
        "size": "1024x1024",
        "response_format": "b64_json",
    }
    upstream_body = {"model": "gpt-image-2", "prompt": "bench", "size": "1024x1024"}
    forwarders = {name: (app, free_port()) for name, app in FORWARDERS.items()}
    paths = [
        Path_("direct", f"http://127.0.0.1:{up}/v1/images/generations", upstream_body, {}),
        Path_("gateway", f"http://127.0.0.1:{gw}/v1/images/generations", gateway_body, {}),
        *(
            Path_(name, f"http://127.0.0.1:{port}/v1/images/generations", upstream_body, {})
            for name, (_, port) in forwarders.items()
        ),
    ]
    forwarder_env = {
        "BENCH_UPSTREAM_URL": f"http://127.0.0.1:{up}/v1/images/generations",
        "PYTHONPATH": str(ROOT),
    }
    with ExitStack() as stack:
        stack.enter_context(
            running([sys.executable, str(HERE / "upstream.py"), "--port", str(up)], up, {})
        )
        stack.enter_context(running(gateway_cmd(gw), gw, gateway_env(up)))
        if args.baseline:
            bl = free_port()
            baseline = Path(args.baseline).resolve()
            stack.enter_context(running(baseline_cmd(bl), bl, gateway_env(up), cwd=baseline))
            paths.insert(
                2,
                Path_(
                    "gateway (baseline)",
                    f"http://127.0.0.1:{bl}/v1/images/generations",
                    gateway_body,
                    {},
                ),
            )
        for app, port in forwarders.values():
            stack.enter_context(running(forwarder_cmd(app, port), port, forwarder_env))
        litellm_up = stack.enter_context(litellm_proxy(ll, up))
        if litellm_up:
            paths.append(
                Path_(
                    "litellm",
                    f"http://127.0.0.1:{ll}/v1/images/generations",
                    upstream_body,
                    {"Authorization": f"Bearer {LITELLM_MASTER}"},
                )
            )
        for path in paths:  # warm up: first requests, connection pools, caches
            wrk(path, 4, 2)
        c32: dict[str, list[Run]] = {p.name: [] for p in paths}
        c1: dict[str, list[Run]] = {p.name: [] for p in paths}
        for round_ in range(args.rounds):
            for path in ordered(paths, round_):
                c32[path.name].append(wrk(path, 32, args.seconds))
                c1[path.name].append(wrk(path, 1, args.seconds / 2))
    return overhead_table(args, paths, c32, c1)


@contextmanager
def litellm_proxy(port: int, upstream: int) -> Iterator[bool]:
    if not LITELLM.exists():
        print(f"(LiteLLM is not installed at {LITELLM}: `make bench-litellm` installs it)")
        yield False
        return
    config = {
        "model_list": [
            {
                "model_name": "gpt-image-2",
                "litellm_params": {
                    "model": "openai/gpt-image-2",
                    "api_base": f"http://127.0.0.1:{upstream}/v1",
                    "api_key": KEY,
                },
            }
        ],
        "general_settings": {"master_key": LITELLM_MASTER},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        json.dump(config, file)  # JSON is YAML
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    try:
        with running(
            [
                str(LITELLM),
                "--config",
                file.name,
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--num_workers",
                "1",
            ],
            port,
            env,
            seconds=180,
        ):
            yield True
    finally:
        os.unlink(file.name)


def _median(runs: list[Run], field: str) -> float:
    values: list[float] = [getattr(run, field) for run in runs]
    return statistics.median(values)


def overhead_table(
    args: argparse.Namespace,
    paths: list[Path_],
    c32: dict[str, list[Run]],
    c1: dict[str, list[Run]],
) -> str:
    direct_c1 = _median(c1["direct"], "p50_ms")
    forwarder_rps = _median(c32[REFERENCE], "rps")
    forwarder_p99 = _median(c32[REFERENCE], "p99_ms")
    litellm_rps = _median(c32["litellm"], "rps") if "litellm" in c32 else None
    rows = [
        "| path | req/s c=32 | p50 c=32 | p99 c=32 | p50 c=1 | added p50 c=1 | req/s vs forwarder "
        "| p99 vs forwarder | req/s vs LiteLLM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        rps = _median(c32[path.name], "rps")
        p99 = _median(c32[path.name], "p99_ms")
        one = _median(c1[path.name], "p50_ms")
        versus_litellm = f"{rps / litellm_rps:.1f}x" if litellm_rps else "n/a"
        rows.append(
            f"| {path.name} | {rps:,.0f} | {_median(c32[path.name], 'p50_ms'):.2f} ms "
            f"| {p99:.2f} ms | {one:.3f} ms | "
            f"{'-' if path.name == 'direct' else f'+{one - direct_c1:.3f} ms'} | "
            f"{rps / forwarder_rps:.2f} | {p99 / forwarder_p99:.2f} | {versus_litellm} |"
        )
    return "\n".join(
        [
            f"wrk -t1, c=32 for {args.seconds:g} s and c=1 for {args.seconds / 2:g} s per path, "
            f"{args.rounds} interleaved rounds, medians; {os.cpu_count()} CPUs; "
            f"{versions()}.",
            "",
            *rows,
            "",
            targets(c32, forwarder_rps, litellm_rps),
        ]
    )


def targets(c32: dict[str, list[Run]], forwarder_rps: float, litellm_rps: float | None) -> str:
    """The gateway (on its default client, aiohttp) against its targets."""
    gateway = _median(c32["gateway"], "rps")
    line = f"Gateway req/s at c=32: {gateway / forwarder_rps:.2f} of the bare aiohttp forwarder's"
    line += " (target >= 0.6)"
    if litellm_rps:
        line += f", {gateway / litellm_rps:.0f}x LiteLLM's (target >= 25x)"
    return line + "."


def payload(args: argparse.Namespace) -> str:
    up, gw = free_port(), free_port()
    image_b64 = 2 * 1024 * 1024
    raw = image_b64 * 3 // 4
    direct = Path_(
        "direct",
        f"http://127.0.0.1:{up}/v1/images/generations",
        {"model": "gpt-image-2", "prompt": "bench", "n": 4},
        {},
    )
    gateway = Path_(
        "gateway",
        f"http://127.0.0.1:{gw}/v1/images/generations",
        {"model": "openai/gpt-image-2", "prompt": "bench", "n": 4, "response_format": "b64_json"},
        {},
    )
    concurrency = 4
    with (
        running(
            [
                sys.executable,
                str(HERE / "upstream.py"),
                "--port",
                str(up),
                "--images",
                "4",
                "--image-bytes",
                str(raw),
            ],
            up,
            {},
        ),
        running(gateway_cmd(gw), gw, gateway_env(up)) as server,
    ):
        wrk(gateway, 1, 2)
        baseline = rss_kib(server.pid)
        ones: dict[str, list[Run]] = {"direct": [], "gateway": []}
        for round_ in range(args.rounds):
            for path in ordered([direct, gateway], round_):
                ones[path.name].append(wrk(path, 1, args.seconds / 2))
        wrk(gateway, concurrency, args.seconds / 2)
        peak = rss_kib(server.pid, "VmHWM")
    response_mib = 4 * image_b64 / 2**20
    per_request_mib = (peak - baseline) / 1024 / concurrency
    added_p50 = _median(ones["gateway"], "p50_ms") - _median(ones["direct"], "p50_ms")
    added_p99 = _median(ones["gateway"], "p99_ms") - _median(ones["direct"], "p99_ms")
    return "\n".join(
        [
            f"4 images of {image_b64 / 2**20:g} MiB of base64 each ({response_mib:g} MiB per "
            f"answer), c=1 for {args.seconds / 2:g} s per path, {args.rounds} rounds, medians; "
            f"peak RSS under c={concurrency}.",
            "",
            "| metric | value | target |",
            "|---|---|---|",
            f"| direct p50 / p99 | {_median(ones['direct'], 'p50_ms'):.1f} / "
            f"{_median(ones['direct'], 'p99_ms'):.1f} ms | |",
            f"| gateway p50 / p99 | {_median(ones['gateway'], 'p50_ms'):.1f} / "
            f"{_median(ones['gateway'], 'p99_ms'):.1f} ms | |",
            f"| added latency p50 / p99 | {added_p50:.1f} / {added_p99:.1f} ms | p50 <= 25 ms |",
            f"| gateway peak RSS per in-flight request | {per_request_mib:.1f} MiB "
            f"({per_request_mib / response_mib:.2f}x the answer) | <= 3x |",
        ]
    )


def versions() -> str:
    names = ["mesh-images-asgi", "uvicorn", "httptools", "aiohttp", "pyreqwest", "httpx-aiohttp"]
    names += ["httpx", "pydantic"]
    found = [f"{name} {metadata.version(name)}" for name in names]
    if LITELLM.exists():
        out = subprocess.run(
            [str(LITELLM.parent / "pip"), "show", "litellm"], capture_output=True, text=True
        ).stdout
        version = re.search(r"Version: (\S+)", out)
        found.append(f"litellm {version[1] if version else '?'}")
    return ", ".join(found)


def write_section(path: Path, name: str, title: str, table: str) -> None:
    begin, end = f"<!-- bench/{name} begin -->", f"<!-- bench/{name} end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="c=32 run length per path")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", choices=["overhead", "payload"])
    parser.add_argument("--write", metavar="FILE", help="also write the tables into FILE")
    parser.add_argument(
        "--baseline", metavar="DIR", help="also measure the gateway of the checkout in DIR"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    parts = [
        ("overhead", "overhead.py: request overhead", overhead),
        ("payload", "overhead.py --only payload: large answers", payload),
    ]
    for name, title, run in parts:
        if args.only in (None, name):
            table = run(args)
            print(f"## {title}\n\n{table}\n")
            if args.write:
                write_section(Path(args.write), f"overhead.py {name}", title, table)


if __name__ == "__main__":
    main()
