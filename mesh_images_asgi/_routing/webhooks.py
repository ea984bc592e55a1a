"""Completion webhooks of async jobs: allow-listed hosts only, signed, retried; off by default.

A submission may name a URL in ``X-Webhook-URL``; it is accepted only when
``MESH_IMAGES_JOB_WEBHOOK_HOSTS`` lists its host (and ``MESH_IMAGES_JOB_WEBHOOK_SECRET`` is
set), so a client cannot make the gateway call an address of its choosing. When the job
succeeds or fails, the worker whose result won POSTs the job object (as ``GET`` shows it).

Signed as Standard Webhooks (standardwebhooks.com) sign: ``webhook-id`` (the job id),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`` keyed with the secret's bytes (stdlib ``hmac``). Retried on a
connection error, a 429 or a 5xx, ``ATTEMPTS`` times with doubling delays; redirects are not
followed. Delivery is at most once per finishing worker: a gateway that stops drops it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx
import orjson

from mesh_images_asgi._core.errors import InvalidRequest
from mesh_images_asgi._domain.image_jobs import JobRecord

__all__ = ["ATTEMPTS", "WEBHOOK_HEADER", "Webhooks", "sign"]

logger = logging.getLogger("mesh_images_asgi")

WEBHOOK_HEADER = b"x-webhook-url"
ATTEMPTS = 5
_MAX_URL = 2048


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of ``body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Webhooks:
    """Checks webhook URLs at submission and delivers them; ``aclose`` drops pending ones."""

    def __init__(self, hosts: Sequence[str], secret: bytes | None, *, backoff: float = 1.0) -> None:
        self._hosts = frozenset(host.lower() for host in hosts)
        self._secret = secret
        self._backoff = backoff
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def check(self, value: bytes | None) -> str | None:
        """The submission's webhook URL, or None; 400 ``invalid_request`` if it may not be used."""
        if value is None:
            return None
        if not self._hosts or self._secret is None:
            raise InvalidRequest(
                "Webhooks are off on this gateway (MESH_IMAGES_JOB_WEBHOOK_HOSTS); poll the job.",
                param="X-Webhook-URL",
            )
        url = value.decode("latin-1").strip()
        parts = urlsplit(url)
        if (
            len(url) > _MAX_URL
            or parts.scheme not in {"http", "https"}
            or (parts.hostname or "").lower() not in self._hosts
            or parts.username is not None
        ):
            raise InvalidRequest(
                "X-Webhook-URL must be an http(s) URL on a host this gateway's operator allowed.",
                param="X-Webhook-URL",
            )
        return url

    def deliver(self, record: JobRecord) -> None:
        """Send ``record``'s webhook in the background, if it has one."""
        if record.webhook is None or self._secret is None:
            return
        task = asyncio.create_task(self._send(record.webhook, record, self._secret))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _send(self, url: str, record: JobRecord, secret: bytes) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10, follow_redirects=False)
        body = orjson.dumps(record.public())
        delay = self._backoff
        for attempt in range(1, ATTEMPTS + 1):
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": record.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, record.id, timestamp, body),
            }
            try:
                answer = await self._client.post(url, content=body, headers=headers)
                if answer.status_code < 300:
                    return
                if answer.status_code != 429 and answer.status_code < 500:
                    break  # the receiver refused it: retrying will not help
            except httpx.HTTPError:
                pass
            if attempt < ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
        logger.warning("mesh-images: the webhook of job %s was not delivered", record.id)
