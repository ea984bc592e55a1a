"""OAuth2 access tokens for Vertex AI from google-auth credentials (service account or ADC).

google-auth refreshes synchronously, so a refresh runs in a worker thread and never blocks the
event loop. One lock serialises refreshes and a generation counter stops a stampede: when the
token goes stale under load, the first request refreshes it and every request that queued behind
it takes the new token, so the token endpoint sees one call, not one per request. The token is
refreshed ``REFRESH_MARGIN`` before it expires, and again when Vertex rejects it (401).

A service-account key a client brings (BYOK) is read before google-auth loads it: only an RSA
key of at most ``MAX_CLIENT_KEY_BITS`` may be loaded (loading checks the key, and for a 15,360-bit
key that took 25 s of CPU), anything else is the documented auth failure. Reading it, loading it
and minting its token run in a worker thread, at most ``client_key_threads`` at once.

This module needs the ``vertex`` extra (``google-auth``, which brings ``cryptography``); the
API-key mode does not.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mesh_images_asgi._config import ConfigError
from mesh_images_asgi._core.errors import GatewayError, UpstreamAuthError, UpstreamError
from mesh_images_asgi._observe.redact import redact

__all__ = [
    "MAX_CLIENT_KEY_BITS",
    "REFRESH_MARGIN",
    "SCOPES",
    "TokenAuth",
    "client_key_problem",
    "load_credentials",
    "service_account_token",
]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN = datetime.timedelta(minutes=5)
MAX_CLIENT_KEY_BITS = 4096
"""Largest RSA key a client's service account may bring (Google issues 2048-bit keys)."""


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxRequest(google.auth.transport.Request):
    """google-auth's transport interface over a blocking ``httpx.Client`` (no ``requests``)."""

    def __init__(self, timeout: float) -> None:
        # No keep-alive: a refresh comes once an hour, and an idle connection the token endpoint
        # has closed would sit half-closed (CLOSE_WAIT) in between.
        self._client = httpx.Client(
            timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0)
        )

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        try:
            response = self._client.request(
                method,
                url,
                content=body,
                headers=headers,
                timeout=timeout if timeout is not None else self._client.timeout,
            )
        except httpx.HTTPError as exc:
            raise google.auth.exceptions.TransportError(str(exc)) from exc
        return _Response(response)

    def close(self) -> None:
        self._client.close()


def load_credentials(
    path: Path | None,
) -> tuple[google.auth.credentials.Credentials, str | None] | None:
    """Credentials from ``path`` (any google-auth credentials file) or, without one, from ADC.

    Returns the credentials and the project they name, if any; None when ADC finds nothing. A
    file that cannot be used is a ``ConfigError``.
    """
    if path is None:
        try:
            credentials, project = google.auth.default(scopes=SCOPES)
        except google.auth.exceptions.DefaultCredentialsError:
            return None
    else:
        try:
            # The operator's own GOOGLE_APPLICATION_CREDENTIALS: google.auth.default() loads it
            # the same way and silences the same warning (meant for files from untrusted sources).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                credentials, project = google.auth.load_credentials_from_file(
                    str(path), scopes=SCOPES
                )
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS: {redact(str(exc))}") from None
    return credentials, project


def _utcnow() -> datetime.datetime:
    # google-auth keeps expiry as a naive UTC datetime.
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class TokenAuth:
    """``Authorization: Bearer`` headers from google-auth credentials, cached and refreshed."""

    def __init__(
        self, credentials: google.auth.credentials.Credentials, *, timeout: float = 30.0
    ) -> None:
        self._credentials = credentials
        self._request = _HttpxRequest(timeout)
        self._lock = anyio.Lock()
        self._token: str | None = None
        self._expiry: datetime.datetime | None = None
        self._generation = 0
        self._failure: GatewayError | None = None

    async def headers(self) -> dict[str, str]:
        """Headers that authenticate one Vertex request."""
        return {"authorization": f"Bearer {await self._current_token()}"}

    async def rejected(self, headers: Mapping[str, str]) -> bool:
        """Vertex refused ``headers`` (401): drop their token. True: new headers are worth a try."""
        await self._current_token(rejected=headers.get("authorization", "").removeprefix("Bearer "))
        return True

    async def aclose(self) -> None:
        self._request.close()

    def _fresh(self) -> bool:
        return self._expiry is None or self._expiry - _utcnow() > REFRESH_MARGIN

    async def _current_token(self, rejected: str | None = None) -> str:
        token = self._token
        if token is not None and token != rejected and self._fresh():
            return token
        seen = self._generation
        async with self._lock:
            if self._generation == seen:
                await self._refresh()
            # Requests that queued behind a failed refresh share its error instead of retrying.
            if self._failure is not None:
                raise self._failure
        assert self._token is not None
        return self._token

    async def _refresh(self) -> None:
        credentials, request = self._credentials, self._request

        def refresh() -> tuple[str, datetime.datetime | None]:
            credentials.refresh(request)
            return str(credentials.token), credentials.expiry

        try:
            self._token, self._expiry = await anyio.to_thread.run_sync(refresh)
        except google.auth.exceptions.GoogleAuthError as exc:
            self._failure = _refresh_error(exc)
        else:
            self._failure = None
        # Counted only once the outcome is recorded: a cancelled refresh leaves it to the next.
        self._generation += 1


def client_key_problem(pem: str) -> str | None:
    """Why the PEM private key of a client's service account may not be loaded, or None.

    Cheap whatever the key: its structure is parsed without the checks loading does (which cost
    seconds for a very large RSA key), to read its type and size.
    """
    try:
        key = load_pem_private_key(pem.encode(), None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "its private_key is not an unencrypted PEM private key"
    if not isinstance(key, rsa.RSAPrivateKey):
        return "its private_key is not an RSA key"
    if key.key_size > MAX_CLIENT_KEY_BITS:
        return f"its RSA key has {key.key_size} bits, more than {MAX_CLIENT_KEY_BITS}"
    return None


def _client_credentials(
    info: Mapping[str, Any], token_uri: str
) -> google.auth.credentials.Credentials:
    """Load a client's service-account key (after ``client_key_problem`` found nothing)."""
    from google.oauth2 import service_account

    credentials: google.auth.credentials.Credentials = (
        service_account.Credentials.from_service_account_info(
            {**info, "token_uri": token_uri}, scopes=SCOPES
        )
    )
    return credentials


def _unusable_key(problem: str) -> UpstreamAuthError:
    return UpstreamAuthError(
        f"The service-account key this request brought cannot be used: {problem}.",
        provider_code="invalid_client_credentials",
    )


async def service_account_token(
    info: Mapping[str, Any],
    token_uri: str,
    *,
    limiter: anyio.CapacityLimiter,
    http_timeout: float = 30.0,
) -> str:
    """A token for a service account a client brought (BYOK), minted for this request only.

    ``token_uri`` replaces the key's own: a client must not choose where the gateway posts.
    The key is read, loaded and used in a worker thread of ``limiter``. Nothing is cached; a key
    that is not a small enough RSA key, cannot sign, or that Google refuses, is
    ``UpstreamAuthError``.
    """

    def mint() -> str:
        problem = client_key_problem(str(info["private_key"]))
        if problem is not None:
            raise _unusable_key(problem)
        try:
            credentials = _client_credentials(info, token_uri)
        except ValueError:
            raise _unusable_key("it cannot be used to sign") from None
        request = _HttpxRequest(http_timeout)
        try:
            credentials.refresh(request)
        finally:
            request.close()
        return str(credentials.token)

    try:
        return await anyio.to_thread.run_sync(mint, abandon_on_cancel=True, limiter=limiter)
    except google.auth.exceptions.GoogleAuthError as exc:
        raise _refresh_error(exc) from None


def _refresh_error(exc: google.auth.exceptions.GoogleAuthError) -> GatewayError:
    if isinstance(exc, google.auth.exceptions.TransportError):
        return UpstreamError(
            "Could not reach Google's token endpoint to authenticate to Vertex AI.",
            provider_code="connection_error",
        )
    return UpstreamAuthError(
        f"Google refused to issue a Vertex AI access token: {redact(str(exc))}",
        provider_code="token_refresh_failed",
    )
