"""Vertex access tokens: cached, refreshed early in a worker thread, one refresh at a time."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any, cast

import anyio
import google.auth.credentials
import google.auth.exceptions
import pytest

from mesh_images_asgi._core.errors import GatewayError, UpstreamAuthError, UpstreamError
from mesh_images_asgi.providers.vertex_auth import REFRESH_MARGIN, TokenAuth

pytestmark = pytest.mark.anyio


class FakeCredentials:
    """Stands in for google-auth credentials: each refresh mints ``token-<n>``."""

    def __init__(self, lifetime: datetime.timedelta, *, fail: Exception | None = None) -> None:
        self.lifetime = lifetime
        self.fail = fail
        self.refreshes = 0
        self.threads: set[int] = set()
        self.token: str | None = None
        self.expiry: datetime.datetime | None = None

    def refresh(self, request: Any) -> None:
        self.threads.add(threading.get_ident())
        time.sleep(0.05)  # a blocking HTTP round trip
        self.refreshes += 1
        if self.fail is not None:
            raise self.fail
        self.token = f"token-{self.refreshes}"
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.expiry = now + self.lifetime


def token_auth(credentials: FakeCredentials) -> TokenAuth:
    return TokenAuth(cast(google.auth.credentials.Credentials, credentials))


HOUR = datetime.timedelta(hours=1)


async def test_a_fresh_token_is_cached_and_refreshed_off_the_event_loop() -> None:
    credentials = FakeCredentials(HOUR)
    auth = token_auth(credentials)
    try:
        first = await auth.headers()
        assert await auth.headers() == first == {"authorization": "Bearer token-1"}
        assert credentials.refreshes == 1
        assert threading.get_ident() not in credentials.threads
    finally:
        await auth.aclose()


async def test_a_token_close_to_expiry_is_refreshed_before_it_expires() -> None:
    credentials = FakeCredentials(REFRESH_MARGIN - datetime.timedelta(seconds=30))
    auth = token_auth(credentials)
    assert await auth.headers() == {"authorization": "Bearer token-1"}
    assert await auth.headers() == {"authorization": "Bearer token-2"}
    assert credentials.refreshes == 2


async def test_concurrent_requests_with_a_stale_token_share_one_refresh() -> None:
    credentials = FakeCredentials(datetime.timedelta(seconds=1))
    auth = token_auth(credentials)
    await auth.headers()
    credentials.lifetime = HOUR
    seen: list[dict[str, str]] = []

    async def one() -> None:
        seen.append(await auth.headers())

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(one)
    assert credentials.refreshes == 2
    assert seen == [{"authorization": "Bearer token-2"}] * 50


async def test_a_rejected_token_is_replaced_once_for_all_who_saw_it() -> None:
    credentials = FakeCredentials(HOUR)
    auth = token_auth(credentials)
    rejected = await auth.headers()
    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(auth.rejected, rejected)
    assert credentials.refreshes == 2
    assert await auth.headers() == {"authorization": "Bearer token-2"}


@pytest.mark.parametrize(
    ("failure", "kind", "provider_code"),
    [
        (
            google.auth.exceptions.RefreshError("invalid_grant: Invalid JWT Signature."),
            UpstreamAuthError,
            "token_refresh_failed",
        ),
        (
            google.auth.exceptions.TransportError("connection refused"),
            UpstreamError,
            "connection_error",
        ),
    ],
)
async def test_a_failed_refresh_is_shared_by_the_requests_waiting_for_it(
    failure: Exception, kind: type[GatewayError], provider_code: str
) -> None:
    credentials = FakeCredentials(HOUR, fail=failure)
    auth = token_auth(credentials)
    errors: list[GatewayError] = []

    async def one() -> None:
        try:
            await auth.headers()
        except GatewayError as error:
            errors.append(error)

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(one)
    assert credentials.refreshes == 1
    assert len(errors) == 20
    assert all(type(error) is kind and error.provider_code == provider_code for error in errors)
    credentials.fail = None
    assert await auth.headers() == {"authorization": "Bearer token-2"}  # a later request retries
