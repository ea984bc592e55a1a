"""The S3 image store against a real S3-protocol server on 127.0.0.1 (moto's server, started
here): objects are written with their type and lifecycle tags, and the presigned URLs the gateway
returns are fetched by a plain HTTP client.

moto does not enforce a presigned URL's expiry (it serves it after ``X-Amz-Expires``), so the
expiry is checked as what the URL and the object carry: ``X-Amz-Expires`` is the TTL, inside the
signed query, and the object's tags give the lifecycle rule its expiry.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._config import ConfigError
from mesh_images_asgi._store.factory import create_store
from mesh_images_asgi._store.s3 import S3Store
from tests.helpers import decode_image
from tests.support.live import serve

BUCKET = "images"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
LOWER_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing-secret"}
GEN = "/v1/images/generations"
BODY = {"model": "local/sketch", "prompt": "a lighthouse", "size": "64x64"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        assert httpx.put(f"{url}/{BUCKET}").status_code == 200
        yield url
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> str:
    """The standard AWS variables, as a deployment sets them."""
    for name, value in {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    return endpoint


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )


def object_key(url: str) -> str:
    return urlsplit(url).path.removeprefix(f"/{BUCKET}/")


def test_a_url_answer_is_a_presigned_link_to_the_object(aws_env: str) -> None:
    settings = Settings(local_latency=0, store=f"s3://{BUCKET}/generated/v1", url_ttl=900)
    with serve(ImagesApp(settings)) as gateway:
        response = httpx.post(gateway + GEN, json=BODY, timeout=30)
        b64 = httpx.post(gateway + GEN, json={**BODY, "response_format": "b64_json"}, timeout=30)
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    url = item["url"]
    assert url.startswith(f"{aws_env}/{BUCKET}/generated/v1/")
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "X-Amz-Signature" in query
    fetched = httpx.get(url)  # a plain HTTP client, no AWS credentials
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.headers["cache-control"] == "public, max-age=900, immutable"
    assert decode_image(fetched.content).size == (64, 64)
    assert b64.status_code == 200
    listed = s3_client(aws_env).list_objects_v2(Bucket=BUCKET, Prefix="generated/v1/")
    assert [entry["Key"] for entry in listed["Contents"]] == [object_key(url)]  # b64: not stored


@pytest.mark.anyio
async def test_objects_carry_their_expiry_for_a_lifecycle_rule(endpoint: str) -> None:
    config: Any = {"endpoint": endpoint, "region": "us-east-1", **LOWER_CREDENTIALS}
    store = S3Store.from_url(f"s3://{BUCKET}/tagged", config, clock=lambda: 2_000_000_000.0)
    url = await store.put(b"\x89PNG not really", "image/png", 120, "ignored")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["120"]
    tags = s3_client(endpoint).get_object_tagging(Bucket=BUCKET, Key=object_key(url))["TagSet"]
    assert {tag["Key"]: tag["Value"] for tag in tags} == {
        "mesh-images": "hosted",
        "mesh-images-expires": "2000000120",
    }
    async with httpx.AsyncClient() as client:
        fetched = await client.get(url)
    assert fetched.content == b"\x89PNG not really"
    assert fetched.headers["x-amz-meta-mesh-images-expires"] == "2000000120"


@pytest.mark.anyio
async def test_tags_can_be_turned_off_for_stores_without_them(endpoint: str) -> None:
    config: Any = {"endpoint": endpoint, "region": "us-east-1", **LOWER_CREDENTIALS}
    store = S3Store.from_url(f"s3://{BUCKET}/untagged", config, tags=False)
    url = await store.put(b"x", "image/webp", 60, "")
    assert (
        s3_client(endpoint).get_object_tagging(Bucket=BUCKET, Key=object_key(url))["TagSet"] == []
    )
    assert object_key(url).startswith("untagged/")
    assert object_key(url).endswith(".webp")


def test_an_unreachable_bucket_is_a_502_not_a_lost_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on discard
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    settings = Settings(local_latency=0, store="s3://missing")
    with serve(ImagesApp(settings)) as gateway:
        response = httpx.post(gateway + GEN, json=BODY, timeout=60)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "image_store_error"


def test_without_the_s3_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "obstore", None)  # as on a base install
    monkeypatch.delitem(sys.modules, "mesh_images_asgi._store.s3", raising=False)
    with pytest.raises(ConfigError, match=r"mesh-images-asgi\[s3\]"):
        create_store(Settings(store=f"s3://{BUCKET}"))
