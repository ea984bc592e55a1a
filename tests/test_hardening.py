"""Input hardening: body deadline (slow loris), depth, string length, control characters,
content encodings, and a prompt that never reaches a header or a log line."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import anyio
import pytest

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._asgi.sse import FRAME_PIECE
from mesh_images_asgi._core.asgi import Message, Receive, Scope, Send
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialSink,
    ProviderResult,
)
from mesh_images_asgi._domain.schemas import MAX_DEPTH, MAX_STRING_CHARS
from tests.asgi.test_app import assert_envelope
from tests.helpers import app_client
from tests.support.leaks import WATCH
from tests.support.live import serve

GEN = "/v1/images/generations"
LOCAL = {"provider": "local", "upstream": "sketch", "sizes": ["256x256"], "max_n": 4}
CANARY = WATCH.secret("prompt-canary-7Q2ZK")  # a prompt must never reach a log line


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.anyio
async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    app = ImagesApp(Settings(body_timeout=0.2, local_latency=0))
    sent: list[Message] = []
    chunks = iter([{"type": "http.request", "body": b'{"prompt":', "more_body": True}])

    async def receive() -> Message:
        chunk = next(chunks, None)
        if chunk is None:
            await anyio.sleep_forever()
        assert chunk is not None
        return chunk

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": GEN, "headers": [], "query_string": b""}
    started = time.monotonic()
    with anyio.fail_after(5):
        await app(scope, receive, send)
    await app.aclose()
    assert 0.2 <= time.monotonic() - started < 2
    assert sent[0]["status"] == 408
    body = json.loads(sent[1]["body"])
    assert body["error"]["code"] == "request_timeout"
    assert body["error"]["message"] == "The request body did not arrive within 0.2 s."


def test_a_slow_loris_over_real_http_is_cut_off_at_the_deadline() -> None:
    app = ImagesApp(Settings(body_timeout=0.5, local_latency=0))
    with serve(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"POST {GEN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
            )
            started = time.monotonic()
            answer = b""
            for _ in range(20):  # a byte now and then, never the whole body
                sock.sendall(b" ")
                time.sleep(0.05)
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"prompt": "fox", "x": nested(MAX_DEPTH - 1)}, None, None),
        (
            {"prompt": "fox", "x": nested(MAX_DEPTH)},
            ["body", "x", *[0] * (MAX_DEPTH - 1)],
            "too_deep",
        ),
        ({"prompt": "fox", "x": {"a": {"b": nested(MAX_DEPTH)}}}, None, "too_deep"),
        ({"prompt": "a" * (MAX_STRING_CHARS + 1)}, ["body", "prompt"], "string_too_long"),
        (
            {"prompt": "fox", "user": "u", "x": ["a" * (MAX_STRING_CHARS + 1)]},
            ["body", "x", 0],
            "string_too_long",
        ),
        ({"prompt": "fox", "k" * (MAX_STRING_CHARS + 1): 1}, None, "string_too_long"),
        ({"prompt": "fox\x00"}, ["body", "prompt"], "control_character"),
        ({"prompt": "fox\x1b[31m"}, ["body", "prompt"], "control_character"),
        ({"prompt": "fox\x7f"}, ["body", "prompt"], "control_character"),
        ({"prompt": "fox", "user": "a\x08b"}, ["body", "user"], "control_character"),
        ({"prompt": "fox", "x": {"k\x01": "v"}}, ["body", "x", "k\x01"], "control_character"),
        ({"prompt": "a fox\tin a\r\nhat, \u00e9\u2028\U0001f98a"}, None, None),
    ],
)
@pytest.mark.anyio
async def test_every_string_and_container_is_bounded(
    body: dict[str, Any], loc: list[Any] | None, kind: str | None
) -> None:
    async with app_client(models={"local/sketch": {"accepts_extra_fields": True}}) as client:
        answer = await client.post(GEN, json={"model": "local/sketch", "size": "256x256", **body})
    if kind is None:
        assert answer.status_code == 200, answer.text
        return
    error = assert_envelope(answer, 422, "validation_error")
    assert kind in [detail["type"] for detail in error["details"]]
    if loc is not None:
        assert loc in [detail["loc"] for detail in error["details"]]


@pytest.mark.anyio
async def test_json_nested_past_the_parsers_limit_is_invalid_json_not_a_crash() -> None:
    body = b'{"prompt": "fox", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with app_client() as client:
        answer = await client.post(GEN, content=body)
    assert_envelope(answer, 400, "invalid_json")


@pytest.mark.anyio
async def test_image_inputs_are_bounded_by_the_body_size_only() -> None:
    image = "data:image/png;base64," + "A" * (MAX_STRING_CHARS * 2)
    async with app_client() as client:
        answer = await client.post(
            GEN, json={"model": "local/sketch", "prompt": "fox", "image": image}
        )
    # Not a string-length error: the local model simply does not take image inputs.
    assert_envelope(answer, 400, "invalid_request")


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate", "zstd", "x-anything"])
@pytest.mark.anyio
async def test_content_encodings_are_refused(encoding: str) -> None:
    async with app_client() as client:
        answer = await client.post(
            GEN, content=b"\x1f\x8b...", headers={"content-encoding": encoding}
        )
    assert_envelope(answer, 415, "unsupported_media_type")


@pytest.mark.anyio
async def test_the_prompt_never_reaches_a_header_or_an_error_message() -> None:
    prompts: list[dict[str, Any]] = [
        {"prompt": CANARY, "size": "3x3"},  # 400 from the model's sizes
        {"prompt": CANARY * 3000},  # 400 past the model's max_prompt_chars
        {"prompt": CANARY, "n": 11},  # 422
        {"prompt": CANARY + "\x00"},  # 422
        {"prompt": CANARY, "size": "256x256"},  # 200
        {"prompt": CANARY, "size": "256x256", "stream": True},  # 200, SSE
    ]
    async with app_client() as client:
        answers = [
            await client.post(GEN, json={"model": "local/sketch", **body}) for body in prompts
        ]
    assert [answer.status_code for answer in answers] == [400, 400, 422, 422, 200, 200]
    for answer in answers:
        assert CANARY not in json.dumps(list(answer.headers.items()))
        if answer.status_code != 200:
            assert CANARY not in answer.text


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"prompt": "fox", "guidance_scale": NaN}', ["body", "guidance_scale"]),
        (b'{"prompt": "fox", "strength": Infinity}', ["body", "strength"]),
        (b'{"prompt": "fox", "options": {"scale": -Infinity}}', ["body", "options", "scale"]),
        (b'{"prompt": "fox", "weights": [1.0, 1e400]}', ["body", "weights", 1]),
    ],
)
@pytest.mark.anyio
async def test_non_finite_numbers_are_422_wherever_they_are(body: bytes, loc: list[Any]) -> None:
    # Unknown fields go to OpenAI untouched: a NaN would reach it as null.
    async with app_client() as client:
        response = await client.post(
            GEN,
            content=body.replace(b"{", b'{"model": "openai/gpt-image-2", ', 1),
            headers={"content-type": "application/json"},
        )
    error = assert_envelope(response, 422, "validation_error")
    assert {"loc": loc, "msg": "Input should be a finite number", "type": "finite_number"} in [
        {key: detail[key] for key in ("loc", "msg", "type")} for detail in error["details"]
    ]


@pytest.mark.anyio
async def test_a_quality_outside_the_contract_is_422_and_one_the_model_lacks_is_400() -> None:
    async with app_client(models={"local/fine": {**LOCAL, "qualities": ["auto", "ultra"]}}) as c:
        unknown = await c.post(GEN, json={"prompt": "fox", "quality": "superb"})  # no model even
        lacking = await c.post(
            GEN, json={"prompt": "fox", "model": "vertex/nano-banana-2", "quality": "hd"}
        )
        catalog_value = await c.post(
            GEN, json={"prompt": "fox", "model": "local/sketch", "quality": "ultra"}
        )
        served = await c.post(
            GEN,
            json={"prompt": "fox", "model": "local/fine", "quality": "ultra", "size": "256x256"},
        )
    error = assert_envelope(unknown, 422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "quality"]
    assert assert_envelope(lacking, 400, "invalid_request")["param"] == "quality"
    # A value a catalog entry adds is the contract's too: the model that lacks it says 400.
    assert assert_envelope(catalog_value, 400, "invalid_request")["param"] == "quality"
    assert served.status_code == 200, served.text


class BigImage:
    """A provider answering one image of ``size`` bytes of base64 at once."""

    name = "local"

    def __init__(self, size: int) -> None:
        self.b64 = "A" * size

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        image = GeneratedImage(b64_json=self.b64)
        return ProviderResult(images=[image], created=1, output_format="png")

    async def aclose(self) -> None:
        return None


def test_a_stream_whose_client_never_reads_strands_at_most_one_piece_of_a_frame() -> None:
    image = 12 * 1024 * 1024  # more than loopback's socket buffers take
    handed: list[int] = []
    finished = threading.Event()
    settings = Settings(send_timeout=0.5, keepalive_interval=30, local_latency=0)
    app = ImagesApp(settings, providers={"local": BigImage(image)})

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                handed.append(len(message["body"]))
            await send(message)

        try:
            await app(scope, receive, counting_send)
        finally:
            if scope["type"] == "http":
                finished.set()

    body = json.dumps({"model": "local/sketch", "prompt": "fox", "stream": True}).encode()
    with serve(recording) as url, socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = url.removeprefix("http://").split(":")
        client.connect((host, int(port)))
        client.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )  # and never reads a byte
        assert finished.wait(30), "the stream did not end at its send timeout"
    # Each send hands the server at most one piece: what it buffers for a reader that stopped.
    assert max(handed) <= FRAME_PIECE
    assert sum(handed) < image  # most of the image was never handed over
