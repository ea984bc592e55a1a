"""Async jobs on the embedded queue, live: uvicorn on 127.0.0.1, the OpenAI emulator upstream.

Submit, poll, succeed (``local/*`` and ``openai/*``), the same 4xx as the synchronous route at
submission, failures with their code, cancellation of queued and running jobs (the emulator sees
the upstream request go), ownership by gateway key, the bounded queue, expiry after the TTL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._access.keys import GatewayKey, hash_key
from mesh_images_asgi._core.asgi import Receive, Scope, Send
from mesh_images_asgi._routing.job_memory import MemoryJobQueue
from tests.edit_images import solid
from tests.emulators.openai import OpenAIEmulator, content_policy_violation, emulator_fixtures
from tests.helpers import decode_image
from tests.support.live import serve

UPSTREAM_KEY = "sk-emulator-jobs-0123456789"
SUBMIT = "/v1/async/images/generations"
KEY_A, KEY_B = "mik_key-a-0123456789", "mik_key-b-0123456789"
KEYS = [
    GatewayKey(hash=hash_key(KEY_A), label="team-a"),
    GatewayKey(hash=hash_key(KEY_B), label="team-b"),
]
HANG = 60.0
"""Emulator latency that holds a job running until the test cancels it."""


served, emulator = emulator_fixtures(UPSTREAM_KEY)


@pytest.fixture
def upstream(served: tuple[OpenAIEmulator, str]) -> str:
    return served[1]


def gateway(upstream: str, jobs: MemoryJobQueue | None = None, **settings: Any) -> ImagesApp:
    settings.setdefault("max_attempts", 1)
    return ImagesApp(
        Settings(
            openai_api_key=UPSTREAM_KEY, openai_base_url=upstream, local_latency=0, **settings
        ),
        jobs=jobs,
        metrics_route=True,
    )


@pytest.fixture
def client(upstream: str) -> Iterator[httpx.Client]:
    with serve(gateway(upstream)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


def wait_finished(
    http: httpx.Client, job_id: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Poll until the job is finished (the deadline only catches a hang)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = http.get(f"/v1/async/jobs/{job_id}", headers=headers)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["status"] in {"succeeded", "failed", "cancelled"}:
            return body
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def wait_status(http: httpx.Client, job_id: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while http.get(f"/v1/async/jobs/{job_id}").json()["status"] != status:
        assert time.monotonic() < deadline, f"job {job_id} never became {status}"
        time.sleep(0.02)


def test_a_local_job_succeeds_with_the_synchronous_answer(client: httpx.Client) -> None:
    request = {"model": "local/sketch", "prompt": "a lighthouse", "seed": 7, "n": 2}
    request["response_format"] = "b64_json"
    submitted = client.post(SUBMIT, json=request)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["id"].startswith("job_")
    assert job["object"] == "image.job"
    assert job["status"] == "queued"
    assert job["model"] == "local/sketch"
    assert isinstance(job["created"], int)
    assert submitted.headers["location"] == f"/v1/async/jobs/{job['id']}"
    finished = wait_finished(client, job["id"])
    assert finished["status"] == "succeeded"
    synchronous = client.post("/v1/images/generations", json=request).json()
    assert finished["result"]["data"] == synchronous["data"]
    assert set(finished["result"]) == set(synchronous)
    assert "error" not in finished


def test_an_openai_job_calls_the_upstream_once(
    client: httpx.Client, emulator: OpenAIEmulator
) -> None:
    job = client.post(SUBMIT, json={"model": "openai/gpt-image-2", "prompt": "a fox"}).json()
    finished = wait_finished(client, job["id"])
    assert finished["status"] == "succeeded"
    assert finished["result"]["data"][0]["url"].startswith("data:image/png;base64,")
    assert finished["result"]["usage"]["total_tokens"] > 0
    assert len(emulator.requests) == 1
    assert emulator.requests[0].body["prompt"] == "a fox"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "local/sketch"}, 422, "validation_error"),
        ({"model": "local/sketch", "prompt": "x", "size": "3x3"}, 400, "invalid_request"),
        ({"model": "nobody/nothing", "prompt": "x"}, 404, "model_not_found"),
        ({"model": "local/sketch", "prompt": "x", "stream": True}, 400, "invalid_request"),
    ],
)
def test_a_bad_submission_is_the_synchronous_error_and_no_job(
    client: httpx.Client, body: dict[str, Any], status: int, code: str
) -> None:
    answer = client.post(SUBMIT, json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    if not body.get("stream"):
        synchronous = client.post("/v1/images/generations", json=body)
        assert (synchronous.status_code, synchronous.json()["error"]["code"]) == (status, code)
    metrics = client.get("/metrics")
    assert 'mesh_images_jobs_total{status="queued"}' not in metrics.text


def test_a_failed_job_carries_the_error_object(
    client: httpx.Client, emulator: OpenAIEmulator
) -> None:
    emulator.fault = content_policy_violation()
    job = client.post(SUBMIT, json={"model": "openai/gpt-image-2", "prompt": "no"}).json()
    finished = wait_finished(client, job["id"])
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "content_policy_violation"
    assert finished["error"]["message"]
    assert "result" not in finished


def test_cancelling_queued_and_running_jobs(upstream: str, emulator: OpenAIEmulator) -> None:
    emulator.latency = HANG
    app = gateway(upstream, job_concurrency=1)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        body = {"model": "openai/gpt-image-2", "prompt": "slow"}
        running = http.post(SUBMIT, json=body).json()["id"]
        queued = http.post(SUBMIT, json={**body, "prompt": "never"}).json()["id"]
        assert emulator.wait_received(10)
        wait_status(http, running, "running")
        assert "mesh_images_job_queue_depth 1.0" in http.get("/metrics").text
        cancelled = http.delete(f"/v1/async/jobs/{queued}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        answer = http.delete(f"/v1/async/jobs/{running}")
        assert answer.json()["status"] == "cancelled"
        assert emulator.wait_cancelled(10)  # the upstream request went away
        assert wait_finished(http, running)["status"] == "cancelled"
        # The worker is free again and never runs the cancelled queued job.
        emulator.latency = 0
        after = http.post(SUBMIT, json={**body, "prompt": "after"}).json()["id"]
        assert wait_finished(http, after)["status"] == "succeeded"
        assert [request.body["prompt"] for request in emulator.requests] == ["slow", "after"]
        assert wait_finished(http, queued)["status"] == "cancelled"
        metrics = http.get("/metrics").text
        assert 'mesh_images_jobs_total{status="cancelled"} 2.0' in metrics


def test_a_job_belongs_to_the_key_that_made_it(upstream: str) -> None:
    app = gateway(upstream, api_keys=KEYS)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        a = {"authorization": f"Bearer {KEY_A}"}
        b = {"authorization": f"Bearer {KEY_B}"}
        job = http.post(SUBMIT, json={"model": "local/sketch", "prompt": "mine"}, headers=a)
        job_id = job.json()["id"]
        assert wait_finished(http, job_id, a)["status"] == "succeeded"
        for method in ("GET", "DELETE"):
            answer = http.request(method, f"/v1/async/jobs/{job_id}", headers=b)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "not_found"
        assert http.get(f"/v1/async/jobs/{job_id}").status_code == 401
        assert http.get("/v1/async/jobs/job_unknown", headers=a).status_code == 404


def test_a_full_queue_refuses_with_retry_after(upstream: str, emulator: OpenAIEmulator) -> None:
    emulator.latency = HANG
    app = gateway(upstream, job_concurrency=1, job_queue_size=1)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        body = {"model": "openai/gpt-image-2", "prompt": "hold"}
        held = http.post(SUBMIT, json=body).json()["id"]
        assert emulator.wait_received(10)
        refused = http.post(SUBMIT, json=body)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "provider_not_available"
        assert int(refused.headers["retry-after"]) >= 1
        http.delete(f"/v1/async/jobs/{held}")
        assert emulator.wait_cancelled(10)


def test_a_job_is_gone_after_its_ttl(upstream: str) -> None:
    now = [1_000_000.0]
    queue = MemoryJobQueue(concurrency=2, size=10, ttl=3600, clock=lambda: now[0])
    with (
        serve(gateway(upstream, jobs=queue)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        job_id = http.post(SUBMIT, json={"model": "local/sketch", "prompt": "brief"}).json()["id"]
        assert wait_finished(http, job_id)["status"] == "succeeded"
        now[0] += 3599
        assert http.get(f"/v1/async/jobs/{job_id}").status_code == 200
        now[0] += 2
        gone = http.get(f"/v1/async/jobs/{job_id}")
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "not_found"


def test_a_job_hosts_its_images_in_the_image_store(
    upstream: str, emulator: OpenAIEmulator, tmp_path: Path
) -> None:
    app = gateway(upstream, store="embedded", store_dir=tmp_path)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        job = http.post(SUBMIT, json={"model": "openai/gpt-image-2", "prompt": "hosted"}).json()
        finished = wait_finished(http, job["id"])
        assert finished["status"] == "succeeded"
        link = finished["result"]["data"][0]["url"]
        assert link.startswith(f"{url}/v1/images/hosted/")  # the submission's own base URL
        image = http.get(link)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert decode_image(image.content).format == "PNG"


class Receiver:
    """A webhook receiver on 127.0.0.1: records each delivery, answers ``statuses`` in turn."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.done = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {key.decode(): value.decode() for key, value in scope["headers"]}
        self.deliveries.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        if status == 200:
            self.done.set()


WEBHOOK_SECRET = "whsec-test-0123456789"


def test_a_webhook_is_signed_retried_and_allow_listed(upstream: str) -> None:
    receiver = Receiver(500)  # the first delivery fails; the retry succeeds
    app = gateway(upstream, job_webhook_hosts=("127.0.0.1",), job_webhook_secret=WEBHOOK_SECRET)
    with (
        serve(receiver, lifespan="off") as hook,
        serve(app) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        body = {"model": "local/sketch", "prompt": "call me", "response_format": "b64_json"}
        elsewhere = http.post(SUBMIT, json=body, headers={"x-webhook-url": "http://example.com/"})
        assert elsewhere.status_code == 400
        assert elsewhere.json()["error"]["param"] == "X-Webhook-URL"
        job = http.post(SUBMIT, json=body, headers={"x-webhook-url": f"{hook}/done"}).json()
        assert receiver.done.wait(30)
        finished = wait_finished(http, job["id"])
    assert len(receiver.deliveries) == 2
    headers, payload = receiver.deliveries[-1]
    assert json.loads(payload) == finished
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + payload
    expected = hmac.new(WEBHOOK_SECRET.encode(), signed, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()
    assert headers["webhook-id"] == job["id"]


def test_webhooks_are_off_by_default(client: httpx.Client) -> None:
    body = {"model": "local/sketch", "prompt": "x"}
    answer = client.post(SUBMIT, json=body, headers={"x-webhook-url": "http://127.0.0.1/"})
    assert answer.status_code == 400
    assert "off" in answer.json()["error"]["message"]


def test_an_edit_job_succeeds_with_the_synchronous_edit_answer(client: httpx.Client) -> None:
    png = solid(64, 48)
    fields = {"model": "local/sketch", "prompt": "a cat", "seed": "3", "n": "2"}
    fields["response_format"] = "b64_json"
    files = [("image", ("cat.png", png, "image/png"))]
    submitted = client.post("/v1/async/images/edits", data=fields, files=files)
    assert submitted.status_code == 202, submitted.text
    finished = wait_finished(client, submitted.json()["id"])
    assert finished["status"] == "succeeded"
    synchronous = client.post("/v1/images/edits", data=fields, files=files).json()
    assert finished["result"]["data"] == synchronous["data"]
    assert finished["result"]["size"] == "64x48"


def test_a_bad_edit_submission_is_the_synchronous_error(client: httpx.Client) -> None:
    fields = {"model": "local/sketch", "prompt": "a broken mask"}
    files = [("image", ("a.png", solid(8, 8), "image/png")), ("mask", ("m.png", b"x", "image/png"))]
    answers = [
        client.post(route, data=fields, files=files)
        for route in ("/v1/async/images/edits", "/v1/images/edits")
    ]
    errors = [(answer.status_code, answer.json()["error"]) for answer in answers]
    assert errors[0][0] == 400
    assert errors[0][1]["param"] == "mask"
    assert errors[0] == errors[1]


def test_a_job_has_an_access_log_line_per_run_and_its_metrics(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mesh_images_asgi.access")
    job = client.post(SUBMIT, json={"model": "local/sketch", "prompt": "logged"}).json()
    assert wait_finished(client, job["id"])["status"] == "succeeded"
    lines = [
        record.mesh_images  # type: ignore[attr-defined]
        for record in caplog.records
        if getattr(record, "mesh_images", {}).get("job") == job["id"]
    ]
    ran, submitted = sorted(lines, key=lambda line: str(line["method"]))  # either may log first
    assert (submitted["method"], submitted["status"]) == ("POST", 202)
    assert (ran["method"], ran["status"]) == ("JOB", 200)
    assert ran["route"] == SUBMIT
    assert ran["request_id"] == submitted["request_id"]
    assert ran["model"] == "local/sketch"
    assert ran["images"] == 1
    metrics = client.get("/metrics").text
    assert 'mesh_images_jobs_total{status="queued"} 1.0' in metrics
    assert 'mesh_images_jobs_total{status="succeeded"} 1.0' in metrics
    assert "mesh_images_job_queued_seconds_count 1.0" in metrics
    assert "mesh_images_job_running_seconds_count 1.0" in metrics
