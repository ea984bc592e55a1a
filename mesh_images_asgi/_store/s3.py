"""The S3 image store (``MESH_IMAGES_STORE=s3://bucket/prefix``): any S3-compatible bucket (AWS
S3, Cloudflare R2, MinIO, GCS's S3 API), through ``obstore`` (the ``s3`` extra).

Each image is the object ``{prefix}/{id}.{ext}`` (``id``: 128 random bits), written with its
``Content-Type``, a ``Cache-Control`` running out with the URL, the metadata
``mesh-images-expires={unix seconds}`` and (unless ``tags`` is off, for stores without object
tagging) the tags ``mesh-images=hosted`` and ``mesh-images-expires``, so that a bucket lifecycle
rule can delete it (docs/image-store.md). The URL handed out is presigned (SigV4 query string) for
``GET`` until the expiry. Credentials, endpoint and region come from the standard variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``,
``AWS_REGION``), read by obstore; an ``http://`` endpoint (a local MinIO) is allowed as such.

Why obstore rather than aioboto3: obstore is one compiled wheel with no Python dependencies
(aioboto3 brings boto3, botocore, aiobotocore and aiohttp, some 25 MB installed), its calls run
in Rust's tokio outside our event loop (no per-request Python work for signing and HTTP), and it
presigns with the same credentials as a plain function (``sign_async``) where aioboto3 needs a
client context. What we give up: boto's configuration files (``~/.aws/config`` profiles); the
environment variables cover the set-ups this gateway targets.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.store import S3Store as _Bucket

from mesh_images_asgi._store.base import EXTENSIONS

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

__all__ = ["S3Store"]

# A client waits for its images while we store them: a store outage must end as a prompt 502,
# not after obstore's default retries (10 of them, for up to 3 minutes).
CONNECT_TIMEOUT = timedelta(seconds=5)
REQUEST_TIMEOUT = timedelta(seconds=30)
MAX_RETRIES = 2
RETRY_TIMEOUT = timedelta(seconds=15)


class S3Store:
    """Images as objects under ``prefix`` in ``bucket``, linked by presigned URLs."""

    def __init__(
        self,
        bucket: _Bucket,
        prefix: str,
        *,
        tags: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._tags = tags
        self._clock = clock

    @classmethod
    def from_url(
        cls,
        url: str,
        config: S3Config | None = None,
        *,
        tags: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> S3Store:
        """``s3://bucket/prefix``; the rest from the AWS environment variables, which ``config``
        (obstore's S3 configuration) overrides."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        endpoint = (config or {}).get("endpoint") or os.environ.get("AWS_ENDPOINT_URL") or ""
        options: ClientConfig = {"connect_timeout": CONNECT_TIMEOUT, "timeout": REQUEST_TIMEOUT}
        if endpoint.startswith("http://"):
            options["allow_http"] = True
        retry: RetryConfig = {"max_retries": MAX_RETRIES, "retry_timeout": RETRY_TIMEOUT}
        bucket_store = _Bucket(bucket, config=config, client_options=options, retry_config=retry)
        return cls(bucket_store, prefix, tags=tags, clock=clock)

    def key(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    async def put(self, data: bytes, content_type: str, ttl: int, base: str) -> str:
        key = self.key(f"{secrets.token_hex(16)}.{EXTENSIONS.get(content_type, 'bin')}")
        expires = int(self._clock()) + ttl
        await obstore.put_async(
            self._bucket,
            key,
            data,
            attributes={
                "Content-Type": content_type,
                "Cache-Control": f"public, max-age={ttl}, immutable",
                "mesh-images-expires": str(expires),
            },
            tags={"mesh-images": "hosted", "mesh-images-expires": str(expires)}
            if self._tags
            else None,
        )
        return await obstore.sign_async(self._bucket, "GET", key, timedelta(seconds=ttl))

    async def aclose(self) -> None:
        """Nothing to release: obstore's client closes with the store object."""
