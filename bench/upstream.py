"""An instant OpenAI-shaped images upstream for benchmarks: raw asyncio, canned answers.

``POST /v1/images/generations`` answers at once with an ``ImagesResponse`` holding ``--images``
base64 images of ``--image-bytes`` bytes each (a PNG's signature, padding and its IEND chunk,
so clients may decode the start and the gateway sees a whole image), plus usage. It checks
nothing and keeps connections alive: its job is to never be the bottleneck. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time

IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a PNG's last chunk: the gateway checks an image ends


def answer_body(images: int, image_bytes: int) -> bytes:
    padding = bytes(range(256)) * (image_bytes // 256 + 1)
    raw = (b"\x89PNG\r\n\x1a\n" + padding)[: max(8, image_bytes - len(IEND))] + IEND
    b64 = base64.b64encode(raw).decode()
    return json.dumps(
        {
            "created": int(time.time()),
            "data": [{"b64_json": b64} for _ in range(images)],
            "background": "opaque",
            "output_format": "png",
            "quality": "low",
            "size": "1024x1024",
            "usage": {
                "input_tokens": 12,
                "output_tokens": 272,
                "total_tokens": 284,
                "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
            },
        }
    ).encode()


class Upstream(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buffer = b""
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(
                    head[at + 15 : head.find(b"\r\n", at) if b"\r\n" in head[at:] else None]
                )
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            assert self.transport is not None
            self.transport.write(self.response)


async def main(port: int, images: int, image_bytes: int) -> None:
    body = answer_body(images, image_bytes)
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(response), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--image-bytes", type=int, default=1500)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.port, args.images, args.image_bytes))
