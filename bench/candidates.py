"""Candidate upstream clients that are not the default, behind the gateway's ``UpstreamClient``
interface, so that the hostile-upstream suite can judge them too:

    python bench/hostile.py pyreqwest     runs tests/test_hostile_upstreams.py on pyreqwest

Each keeps its library's own defaults for what the suite attacks (decoding, proxies, CA store),
because those defaults are what is being judged; only the answer cap and the redirect refusal
are the gateway's (``transport.py``), as on a user's httpx client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, ConnectTimeoutError, PyreqwestError, ReadTimeoutError

from mesh_images_asgi._core.errors import GatewayError
from mesh_images_asgi._upstream.client import (
    ChunkedBody,
    UpstreamClient,
    UpstreamResponse,
    bad_response,
    broken_answer,
    refuse_redirect,
    too_slow,
    unreachable,
)
from mesh_images_asgi._upstream.content_coding import BodyDecoder, DecodingError


class _PyreqwestResponse(ChunkedBody):
    def __init__(self, provider: str, response: Any, limit: int) -> None:
        super().__init__()
        self._provider = provider
        self._response = response
        self._limit = limit

    @property
    def status_code(self) -> int:
        return int(self._response.status)

    @property
    def headers(self) -> Mapping[str, str]:
        return {k.lower(): v for k, v in self._response.headers.items()}

    async def _chunks(self) -> AsyncIterator[bytes]:
        counter = BodyDecoder(None, self._limit)
        reader = self._response.body_reader
        try:
            while (chunk := await reader.read_chunk()) is not None:
                yield counter.feed(bytes(chunk))
        except ReadTimeoutError:
            raise too_slow(self._provider) from None
        except PyreqwestError:
            raise broken_answer(self._provider) from None
        except DecodingError as exc:
            raise bad_response(self._provider, str(exc)) from None


class PyreqwestUpstream(UpstreamClient):
    def __init__(
        self,
        *,
        connect_timeout: float,
        max_connections: int,
        max_answer_bytes: int,
        read_timeout: float | None = None,
    ) -> None:
        self.max_answer_bytes = max_answer_bytes
        builder = (
            ClientBuilder()
            .max_connections(max_connections)
            .connect_timeout(timedelta(seconds=connect_timeout))
            .follow_redirects(False)
            .default_cookie_store(False)
        )
        if read_timeout is not None:
            builder = builder.read_timeout(timedelta(seconds=read_timeout))
        self.client: Client = builder.build()
        self._closed = False

    @asynccontextmanager
    async def post(
        self, provider: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[UpstreamResponse]:
        request = self.client.post(url).headers(dict(headers)).body_bytes(content)
        try:
            async with request.build_streamed() as response:
                refuse_redirect(provider, int(response.status))
                yield _PyreqwestResponse(provider, response, self.max_answer_bytes)
        except ConnectTimeoutError:
            raise unreachable(provider) from None
        except ReadTimeoutError:
            raise too_slow(provider) from None
        except ConnectError as exc:
            if "certificate" in str(exc).lower():
                raise GatewayError(f"certificate: {exc}") from None
            raise unreachable(provider) from None
        except PyreqwestError as exc:
            raise bad_response(provider, f"{type(exc).__name__}: {exc}") from None

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        with anyio.move_on_after(2):  # close() waits for calls a failed test left behind
            await self.client.close()
