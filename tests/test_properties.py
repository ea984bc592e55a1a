"""Property tests of the validator: whatever the body, a 4xx in the envelope or a 200, never 5xx.

Bodies are generated as JSON objects that mix the request's field names (with values of any
type, and plausible ones) with unknown fields, and as raw bytes; each goes through the whole
app in process (``ImagesApp`` with the local provider at latency 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._core.asgi import Message
from mesh_images_asgi._core.errors import GatewayError
from mesh_images_asgi._domain.schemas import ImageRequest, parse_request
from tests.support.fuzz import SMALL_LOCAL, assert_error_envelope

GEN = "/v1/images/generations"
FIELDS = sorted(ImageRequest.model_fields)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.text(min_size=0, max_size=40),
    "model": st.sampled_from(["local/sketch", "local/default", "openai/", "x/y", ""]),
    "n": st.integers(-2, 12),
    "size": st.sampled_from(["256x256", "auto", "1:1", "64x128", "0x0", "99999x99999", "3:4"]),
    "quality": st.sampled_from(["auto", "low", "hd", "HD", "x" * 40]),
    "response_format": st.sampled_from(["url", "b64_json", "png"]),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif"]),
    "output_compression": st.integers(-1, 101),
    "background": st.sampled_from(["transparent", "opaque", "auto", "none"]),
    "partial_images": st.integers(-1, 4),
    "seed": st.integers(-2, 2**31),
    "stream": st.booleans(),
}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def request_bodies(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=12), max_size=8))
    body: dict[str, Any] = {}
    for name in names:
        plausible = PLAUSIBLE.get(name)
        strategy = JSON_VALUES if plausible is None else plausible | JSON_VALUES
        body[name] = draw(strategy)
    if draw(st.booleans()):
        body.setdefault("prompt", "a fox")
    return body


class Client:
    """One ``ImagesApp`` on one event loop (in a portal thread), called with raw bodies."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal) -> None:
        self.portal = portal
        self.app = ImagesApp(
            Settings(local_latency=0, default_model="local/sketch", models=SMALL_LOCAL)
        )

    def post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return self.portal.call(self._post, body)

    async def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[Message] = []

        async def receive() -> Message:
            if messages:
                return messages.pop()
            await anyio.sleep_forever()
            raise AssertionError  # pragma: no cover

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": GEN,
            "headers": [(b"content-type", b"application/json")],
            "query_string": b"",
        }
        with anyio.fail_after(10):
            await self.app(scope, receive, send)
        start = sent[0]
        headers = {key.decode(): value.decode() for key, value in start["headers"]}
        body_out = b"".join(message.get("body", b"") for message in sent[1:])
        return start["status"], headers, body_out


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with anyio.from_thread.start_blocking_portal() as portal:
        client = Client(portal)
        try:
            yield client
        finally:
            portal.call(client.app.aclose)


def check(status: int, headers: dict[str, str], body: bytes) -> None:
    if status == 200:
        assert headers["content-type"] in ("application/json", "text/event-stream")
        return
    assert_error_envelope(status, headers, body)


FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(body=request_bodies())
def test_any_json_object_is_answered_without_a_5xx(client: Client, body: dict[str, Any]) -> None:
    check(*client.post(json.dumps(body).encode()))


@FUZZ
@given(body=JSON_VALUES)
def test_any_json_value_is_answered_without_a_5xx(client: Client, body: Any) -> None:
    check(*client.post(json.dumps(body).encode()))


@FUZZ
@given(body=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_any_bytes_are_answered_without_a_5xx(client: Client, body: bytes) -> None:
    check(*client.post(body))


@settings(max_examples=500, deadline=None, database=None)
@given(body=request_bodies())
def test_the_validator_accepts_or_raises_a_4xx(body: dict[str, Any]) -> None:
    request: ImageRequest | None = None
    refusal: GatewayError | None = None
    try:
        request = parse_request(json.dumps(body).encode())
    except GatewayError as error:
        refusal = error
    if refusal is not None:
        assert 400 <= refusal.status < 500
        assert json.loads(refusal.envelope("req_1"))["error"]["code"] == refusal.code
    else:
        assert request is not None
        assert request.prompt.strip()
