"""The fault suite's world: the OpenAI, Vertex AI and OAuth emulators and gateways in front of
them, each a real uvicorn on 127.0.0.1, with small deadlines and backoffs so that it runs fast.

The session's shared gateway is watched: after the whole suite, it may hold no more connections
to the emulators than its pool, no task beyond its idle ones, and its RSS must not have grown
past a bound (``leak_check``).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from mesh_images_asgi import ImagesApp, Settings
from tests.emulators.oauth import OAuthEmulator
from tests.emulators.openai import ErrorReply, Fault, OpenAIEmulator, StreamError
from tests.emulators.vertex import PROJECT, SHUT_DOWN, VertexEmulator
from tests.support.live import serve
from tests.support.procfs import LoopProbe, connections_to, live_rss_bytes, task_count

KEY = "sk-gateway-0123456789abcdef"
CLIENT_KEY = "sk-client-fedcba9876543210"
GEN = "/v1/images/generations"
POOL = 8  # max_upstream_connections of the shared gateway

FAST: dict[str, Any] = {
    "upstream_timeout": 1.5,
    "retry_backoff": 0.02,
    "retry_backoff_max": 0.1,
    "retry_after_max": 2.0,
    "max_attempts": 4,
    "retries_per_model": 2,
    "breaker_minimum_calls": 1_000_000,  # the matrix rows must not trip each other's circuits
    "bulkhead_limit": 8,
    "bulkhead_queue": 8,
    "max_upstream_connections": POOL,
    "connect_timeout": 1.0,
    "keepalive_interval": 0.1,
    "drain_timeout": 1.0,
    "local_latency": 0,
    "models": {"openai/gpt-image-2.6-flare": {"fallbacks": ["openai/gpt-image-1.5"]}},
}

Answer = ErrorReply | StreamError | Fault | None


def sequence(*answers: Answer) -> Callable[[Any], Answer]:
    """A ``fault_for`` answering the next requests with ``answers``, then normally."""
    queue = list(answers)
    return lambda body: queue.pop(0) if queue else None


def by_model(faults: dict[str, Answer]) -> Callable[[Any], Answer]:
    """A ``fault_for`` failing the upstream models named, and answering the others."""
    return lambda body: faults.get(str(body.get("model"))) if isinstance(body, dict) else None


@dataclass
class Upstreams:
    openai: OpenAIEmulator
    oauth: OAuthEmulator
    vertex: VertexEmulator
    openai_url: str = ""
    vertex_url: str = ""
    oauth_url: str = ""
    key_file: Path | None = None
    client_key_file: Path | None = None
    ports: set[int] = field(default_factory=set)

    def settings(self, **overrides: Any) -> Settings:
        return Settings(
            **{
                **FAST,
                "openai_api_key": KEY,
                "openai_base_url": self.openai_url,
                "google_application_credentials": self.key_file,
                "vertex_base_url": self.vertex_url,
                "vertex_token_uri": f"{self.oauth_url}/token",
                **overrides,
            }
        )

    def client_service_account(self) -> str:
        """A client's own service-account key, as ``X-Vertex-Credentials`` (base64)."""
        assert self.client_key_file is not None
        return base64.b64encode(self.client_key_file.read_bytes()).decode()


@dataclass
class Gateway:
    url: str
    app: ImagesApp
    probe: LoopProbe

    def post(
        self, body: dict[str, Any], client: httpx.Client | None = None, **kw: Any
    ) -> httpx.Response:
        body = {"prompt": "a red fox", "model": "openai/gpt-image-2", **body}
        if client is not None:
            return client.post(self.url + GEN, json=body, **kw)
        kw.setdefault("timeout", 10)
        return httpx.post(self.url + GEN, json=body, **kw)

    def tasks(self) -> int:
        assert self.probe.loop is not None
        return task_count(self.probe.loop)


@contextmanager
def running_gateway(up: Upstreams, **overrides: Any) -> Iterator[Gateway]:
    app = ImagesApp(up.settings(**overrides))
    probe = LoopProbe(app)
    with serve(probe) as url:
        yield Gateway(url, app, probe)


@pytest.fixture(scope="package")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    oauth = OAuthEmulator()
    up = Upstreams(OpenAIEmulator(api_key=KEY), oauth, VertexEmulator(oauth=oauth))
    with (
        up.openai.serve() as openai_url,
        serve(oauth.app, lifespan="off") as oauth_url,
        serve(up.vertex.app, lifespan="off") as vertex_url,
    ):
        keys = tmp_path_factory.mktemp("keys")
        up.openai_url, up.vertex_url, up.oauth_url = openai_url, vertex_url, oauth_url
        up.key_file = oauth.service_account_file(keys, token_uri=f"{oauth_url}/token")
        # A client's key names a token_uri of its choosing: the gateway must ignore it.
        up.client_key_file = oauth.service_account_file(
            keys, token_uri="http://169.254.169.254/steal", project_id=PROJECT
        )
        up.ports = {urlsplit(url).port or 0 for url in (openai_url, vertex_url, oauth_url)}
        yield up


@pytest.fixture(autouse=True)
def _reset(upstreams: Upstreams) -> None:
    upstreams.openai.reset()
    upstreams.openai.api_key = KEY
    upstreams.vertex.reset()
    upstreams.vertex.shut_down = set(SHUT_DOWN)  # as Google left it (a test may revive one)


@pytest.fixture(scope="package")
def shared(upstreams: Upstreams) -> Iterator[Gateway]:
    with running_gateway(upstreams) as gateway:
        yield gateway


@pytest.fixture
def gateway(shared: Gateway) -> Gateway:
    """The shared gateway (its leaks are checked after the suite)."""
    return shared


@pytest.fixture
def make_gateway(upstreams: Upstreams) -> Callable[..., AbstractContextManager[Gateway]]:
    """A gateway of its own, with these settings (closed at the end of its block)."""
    return lambda **overrides: running_gateway(upstreams, **overrides)


def _settled(measure: Callable[[], Any], ok: Callable[[Any], bool], within: float = 3.0) -> Any:
    """``measure()`` once it is ``ok`` (or the last value after ``within`` s)."""
    deadline = time.monotonic() + within
    value = measure()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


@pytest.fixture(scope="package", autouse=True)
def leak_check(shared: Gateway, upstreams: Upstreams) -> Iterator[None]:
    """Warm the shared gateway up, measure it idle; after the suite, measure it again."""
    for body in ({}, {"stream": True}, {"model": "vertex/gemini-3.1-flash-image"}):
        assert shared.post(body).status_code == 200
    idle_tasks = _settled(shared.tasks, lambda n: False, within=0.3)
    rss_before = live_rss_bytes()
    yield
    tasks = _settled(shared.tasks, lambda n: n <= idle_tasks)
    assert tasks <= idle_tasks, f"{tasks - idle_tasks} task(s) left in the gateway's loop"
    sockets = _settled(
        lambda: connections_to(upstreams.ports),
        lambda states: sum(states.values()) <= POOL and not states["CLOSE_WAIT"],
    )
    assert sum(sockets.values()) <= POOL, f"connections to the emulators: {dict(sockets)}"
    by_port = {port: dict(connections_to({port})) for port in upstreams.ports}
    assert not sockets["CLOSE_WAIT"], f"connections left half-closed, by port: {by_port}"
    growth = live_rss_bytes() - rss_before
    assert growth < 64 * 2**20, f"live RSS grew by {growth / 2**20:.1f} MiB over the fault suite"


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    return error


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
