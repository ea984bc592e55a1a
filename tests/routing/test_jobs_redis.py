"""Async jobs in Redis: two real ``mesh-images serve`` processes on one real ``redis-server``.

Each test has its own key prefix (``MESH_IMAGES_JOB_REDIS_PREFIX``), so CI's shared Redis
(``MESH_IMAGES_TEST_REDIS_URL``) serves them all. The OpenAI emulator runs in this process and
counts what reaches the upstream: a job served twice would show as two requests.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.edit_images import solid
from tests.emulators.openai import Fault, OpenAIEmulator, emulator_fixtures
from tests.support.redis import (
    free_port,
    redis_for_tests,
)

UPSTREAM_KEY = "sk-emulator-jobs-redis-0123456789"
SUBMIT = "/v1/async/images/generations"
MODEL = "openai/gpt-image-2"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """CI's Redis when there is one, else a Redis of this module's own."""
    with redis_for_tests() as url:
        yield url


served, emulator = emulator_fixtures(UPSTREAM_KEY)


class Gateway:
    """One ``mesh-images serve`` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "mesh_images_asgi.cli", "serve", "--port", str(self.port)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def gateway_env(redis_url: str, upstream: str, **settings: str) -> dict[str, str]:
    """The environment of gateways sharing one job queue (a prefix of their own)."""
    return {
        "MESH_IMAGES_REDIS_URL": redis_url,
        "MESH_IMAGES_JOB_REDIS_PREFIX": f"test-jobs:{secrets.token_hex(6)}",
        "MESH_IMAGES_MAX_ATTEMPTS": "1",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": upstream,
        **{f"MESH_IMAGES_{name.upper()}": value for name, value in settings.items()},
    }


@contextmanager
def gateways(env: dict[str, str], tmp_path: Path, count: int = 2) -> Iterator[list[Gateway]]:
    """``count`` gateway processes; more may be appended with ``start``."""
    started: list[Gateway] = []
    try:
        for _ in range(count):
            started.append(Gateway(env, tmp_path / f"gateway-{len(started)}.log"))
        yield started
    finally:
        for gateway in started:
            gateway.stop()
        for gateway in started:
            log = gateway.log.read_text(errors="replace")
            assert "Traceback" not in log, log


def submit(base: str, prompt: str) -> str:
    answer = httpx.post(f"{base}{SUBMIT}", json={"model": MODEL, "prompt": prompt}, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def state(base: str, job_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}/v1/async/jobs/{job_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_finished(base: str, job_id: str, patience: float = 60) -> dict[str, Any]:
    """Poll until finished (the deadline only catches a hang)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        body = state(base, job_id)
        if body["status"] in {"succeeded", "failed", "cancelled"}:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_job_submitted_to_one_process_is_answered_by_either(
    redis_url: str, served: tuple[OpenAIEmulator, str], emulator: OpenAIEmulator, tmp_path: Path
) -> None:
    with gateways(gateway_env(redis_url, served[1]), tmp_path) as (one, other):
        job_id = submit(one.url, "shared")
        finished = wait_finished(other.url, job_id)
        assert finished["status"] == "succeeded"
        assert finished["result"]["data"][0]["url"].startswith("data:image/png;base64,")
        assert state(one.url, job_id) == finished
        assert [request.body["prompt"] for request in emulator.requests] == ["shared"]


def test_a_job_whose_process_is_killed_is_finished_by_the_other_after_the_lease(
    redis_url: str, served: tuple[OpenAIEmulator, str], emulator: OpenAIEmulator, tmp_path: Path
) -> None:
    # The job's first run hangs upstream; every later call answers.
    emulator.fault_for = lambda body: Fault.HANG if len(emulator.requests) == 1 else None
    env = gateway_env(redis_url, served[1], job_lease="1")
    with gateways(env, tmp_path, count=1) as started:
        doomed = started[0]
        job_id = submit(doomed.url, "survivor")
        assert emulator.wait_received(20)
        assert state(doomed.url, job_id)["status"] == "running"
        started.append(survivor := Gateway(env, tmp_path / "survivor.log"))
        doomed.stop(signal.SIGKILL)
        assert doomed.process.returncode == -signal.SIGKILL
        finished = wait_finished(survivor.url, job_id)
        assert finished["status"] == "succeeded"
        prompts = [request.body["prompt"] for request in emulator.requests]
        assert prompts == ["survivor", "survivor"]  # the killed run, then the survivor's
        assert emulator.requests[0].cancelled


def test_a_stopping_process_hands_its_running_job_back_at_once(
    redis_url: str, served: tuple[OpenAIEmulator, str], emulator: OpenAIEmulator, tmp_path: Path
) -> None:
    emulator.fault_for = lambda body: Fault.HANG if len(emulator.requests) == 1 else None
    env = gateway_env(redis_url, served[1], job_lease="3600")  # only a hand-back can explain it
    with gateways(env, tmp_path, count=1) as started:
        leaving = started[0]
        job_id = submit(leaving.url, "handed back")
        assert emulator.wait_received(20)
        started.append(staying := Gateway(env, tmp_path / "staying.log"))
        leaving.stop(signal.SIGTERM)
        assert "Application shutdown complete" in leaving.log.read_text()  # a graceful stop
        finished = wait_finished(staying.url, job_id)
        assert finished["status"] == "succeeded"
        assert len(emulator.requests) == 2


def test_200_jobs_across_two_processes_none_lost_none_done_twice(
    redis_url: str, served: tuple[OpenAIEmulator, str], emulator: OpenAIEmulator, tmp_path: Path
) -> None:
    with gateways(gateway_env(redis_url, served[1]), tmp_path) as pair:
        jobs = [submit(pair[index % 2].url, f"job {index}") for index in range(200)]
        results = [wait_finished(pair[(index + 1) % 2].url, job) for index, job in enumerate(jobs)]
    assert [result["status"] for result in results] == ["succeeded"] * 200
    prompts = sorted(request.body["prompt"] for request in emulator.requests)
    assert prompts == sorted(f"job {index}" for index in range(200))  # each exactly once


def test_a_delete_on_one_process_cancels_the_run_on_the_other(
    redis_url: str, served: tuple[OpenAIEmulator, str], emulator: OpenAIEmulator, tmp_path: Path
) -> None:
    emulator.fault = Fault.HANG
    env = gateway_env(redis_url, served[1])
    with gateways(env, tmp_path, count=1) as started:
        runner = started[0]
        job_id = submit(runner.url, "cancel me")
        assert emulator.wait_received(20)
        started.append(other := Gateway(env, tmp_path / "other.log"))  # not running the job
        answer = httpx.delete(f"{other.url}/v1/async/jobs/{job_id}", timeout=30)
        assert answer.status_code == 200
        assert answer.json()["status"] == "cancelled"
        assert emulator.wait_cancelled(20)  # the runner closed its upstream request
        assert state(runner.url, job_id)["status"] == "cancelled"
        assert len(emulator.requests) == 1


def test_a_live_worker_keeps_a_job_longer_than_its_lease(
    redis_url: str, served: tuple[OpenAIEmulator, str], emulator: OpenAIEmulator, tmp_path: Path
) -> None:
    emulator.latency = 4.0  # four leases: only renewals keep the job where it is
    env = gateway_env(redis_url, served[1], job_lease="1")
    with gateways(env, tmp_path) as pair:
        job_id = submit(pair[0].url, "long")
        finished = wait_finished(pair[1].url, job_id)
        assert finished["status"] == "succeeded"
        assert len(emulator.requests) == 1


def test_an_edit_job_carries_its_upload_through_redis(
    redis_url: str, served: tuple[OpenAIEmulator, str], tmp_path: Path
) -> None:
    png = solid(64, 48)  # binary bytes through the queue, read again by the edits reader
    fields = {"model": "local/sketch", "prompt": "a cat", "response_format": "b64_json"}
    env = gateway_env(redis_url, served[1], local_latency="0")
    with gateways(env, tmp_path) as (one, other):
        answer = httpx.post(
            f"{one.url}/v1/async/images/edits",
            data=fields,
            files=[("image", ("cat.png", png, "image/png"))],
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        finished = wait_finished(other.url, answer.json()["id"])
    assert finished["status"] == "succeeded", finished
    assert finished["result"]["size"] == "64x48"
