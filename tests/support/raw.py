"""Raw TCP (and TLS) servers on 127.0.0.1 that answer HTTP byte by byte, as a hostile upstream
would: nothing here is a well-behaved server, each test writes the bytes it means to send."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """What a raw server saw: requests' heads, and a connection count; ``closed`` is set when a
    connection it served was closed by the client."""

    port: int
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/v1/x", *, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


async def read_request(reader: asyncio.StreamReader, server: RawServer) -> bytes:
    """One request's head and body (framed by Content-Length, which our clients send)."""
    head = await reader.readuntil(b"\r\n\r\n")
    server.heads.append(head)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


async def wait_closed_by_peer(reader: asyncio.StreamReader, server: RawServer) -> None:
    """Read and drop until the client closes the connection, then tell ``server.closed``."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    server.closed.set()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter, RawServer], Awaitable[None]],
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[RawServer]:
    """A server on 127.0.0.1 running ``handler`` per connection; connections are closed after it
    returns, and whatever a hostile answer provokes (resets, aborted TLS) is the point."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = RawServer(port=sock.getsockname()[1])

    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer, server)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:  # the server is closing: end quietly (asyncio logs it)
            pass
        finally:
            writer.transport.abort()

    listener = await asyncio.start_server(serve, sock=sock, ssl=tls)
    try:
        yield server
    finally:
        listener.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()
