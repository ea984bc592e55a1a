"""Gateway keys: hashing, constant-time lookup, 401/403, per-key models and n, config, CLI."""

from __future__ import annotations

import hmac
import io
import json
from pathlib import Path
from typing import Any

import pytest

from mesh_images_asgi import Settings
from mesh_images_asgi._access.keys import KEY_PREFIX, GatewayKey, KeyRing, hash_key, new_key
from mesh_images_asgi._asgi.server import DrainingServer
from mesh_images_asgi._core.errors import Unauthorized
from mesh_images_asgi.cli import main
from tests.asgi.test_app import assert_envelope
from tests.helpers import app_client
from tests.support.leaks import WATCH

GEN = "/v1/images/generations"
KEY = WATCH.secret(new_key())
OTHER = WATCH.secret(new_key())
POSTER = {"provider": "local", "upstream": "sketch", "sizes": ["256x256"], "max_n": 4}


def entry(key: str, label: str = "alice", **options: Any) -> dict[str, Any]:
    return {"hash": hash_key(key), "label": label, **options}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def scope_with(authorization: bytes | None) -> dict[str, Any]:
    headers = [] if authorization is None else [(b"authorization", authorization)]
    return {"type": "http", "headers": headers}


def test_a_new_key_is_random_prefixed_and_configured_by_its_sha256() -> None:
    assert KEY.startswith(KEY_PREFIX)
    assert len(KEY) > 40
    assert KEY != OTHER
    configured = GatewayKey.model_validate(entry(KEY))
    assert hash_key(KEY).startswith("sha256:")
    assert configured.hash == hash_key(KEY).removeprefix("sha256:")
    assert KEY not in configured.model_dump_json()
    upper = GatewayKey(hash=hash_key(KEY).upper().removeprefix("SHA256:"), label="x")
    assert upper.digest == configured.digest


def test_the_key_ring_finds_the_presented_key_and_compares_with_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [GatewayKey.model_validate(entry(k, f"k{i}")) for i, k in enumerate((KEY, OTHER))]
    third = GatewayKey.model_validate(entry(new_key(), "k2"))
    ring = KeyRing([*keys, third])
    calls: list[bytes] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr("mesh_images_asgi._access.keys.hmac.compare_digest", counting)
    found = ring.authenticate(scope_with(f"Bearer {KEY}".encode()))
    assert found is not None
    assert found.label == "k0"
    assert len(calls) == 3  # no early exit on the first key's match
    assert ring.authenticate(scope_with(f"bearer   {OTHER} ".encode())) == keys[1]
    assert KeyRing([]).authenticate(scope_with(None)) is None


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Missing API key"),
        (b"", "Missing API key"),
        (b"Bearer", "Missing API key"),
        (b"Bearer ", "Missing API key"),
        (b"Basic " + KEY.encode(), "Missing API key"),
        (KEY.encode(), "Missing API key"),
        (b"Bearer " + b"x" * 600, "Missing API key"),
        (b"Bearer " + OTHER.encode(), "Invalid API key"),
        (b"Bearer " + KEY.encode() + b"x", "Invalid API key"),
        (b"Bearer \xff\xfe", "Invalid API key"),
    ],
)
def test_a_missing_or_wrong_key_is_401(authorization: bytes | None, message: str) -> None:
    ring = KeyRing([GatewayKey.model_validate(entry(KEY))])
    with pytest.raises(Unauthorized) as raised:
        ring.authenticate(scope_with(authorization))
    assert raised.value.message.startswith(message)
    assert (b"www-authenticate", b'Bearer realm="mesh-images"') in raised.value.headers


@pytest.mark.anyio
async def test_with_keys_every_route_but_health_and_openapi_asks_for_one() -> None:
    async with app_client(api_keys=[entry(KEY)]) as client:
        missing = await client.post(GEN, json={"model": "local/sketch", "prompt": "fox"})
        wrong = await client.post(GEN, json={"prompt": "fox"}, headers=bearer(OTHER))
        models = await client.get("/v1/models")
        health = await client.get("/healthz")
        ok = await client.post(
            GEN,
            json={"model": "local/sketch", "prompt": "fox", "size": "256x256"},
            headers=bearer(KEY),
        )
    assert_envelope(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == 'Bearer realm="mesh-images"'
    error = assert_envelope(wrong, 401, "unauthorized")
    assert OTHER not in wrong.text
    assert OTHER[:12] not in error["message"]
    assert_envelope(models, 401, "unauthorized")
    assert health.status_code == 200
    assert ok.status_code == 200, ok.text


@pytest.mark.anyio
async def test_the_key_is_checked_before_the_body_is_read_or_judged() -> None:
    async with app_client(api_keys=[entry(KEY)]) as client:
        garbage = await client.post(GEN, content=b"{not json", headers={"content-type": "text/x"})
    assert_envelope(garbage, 401, "unauthorized")


@pytest.mark.anyio
async def test_a_model_outside_the_keys_patterns_is_403_and_aliases_count() -> None:
    keys = [entry(KEY, models=["local/default"]), entry(OTHER, "bob", models=["local/p*"])]
    async with app_client(api_keys=keys, models={"local/poster": POSTER}) as client:
        by_alias = await client.post(
            GEN,
            json={"model": "local/sketch", "prompt": "fox", "size": "256x256"},
            headers=bearer(KEY),
        )
        denied = await client.post(
            GEN, json={"model": "local/poster", "prompt": "fox"}, headers=bearer(KEY)
        )
        allowed = await client.post(
            GEN, json={"model": "local/poster", "prompt": "fox"}, headers=bearer(OTHER)
        )
        listed = await client.get("/v1/models", headers=bearer(OTHER))
        listed_all = await client.get("/v1/models", headers=bearer(KEY))
        one = await client.get("/v1/models/local/poster", headers=bearer(OTHER))
        hidden = await client.get("/v1/models/local/poster", headers=bearer(KEY))
        anonymous = await client.get("/v1/models/local/poster")
    assert by_alias.status_code == 200, by_alias.text
    error = assert_envelope(denied, 403, "forbidden")
    assert error["param"] == "model"
    assert "local/poster" in error["message"]
    assert allowed.status_code == 200, allowed.text
    assert [model["id"] for model in listed.json()["data"]] == ["local/poster"]
    assert [model["id"] for model in listed_all.json()["data"]] == ["local/sketch"]
    assert one.json()["id"] == "local/poster"
    assert_envelope(hidden, 404, "model_not_found")  # as the list: a key sees what it may use
    assert_envelope(anonymous, 401, "unauthorized")


@pytest.mark.anyio
async def test_a_key_may_be_capped_below_the_models_n() -> None:
    async with app_client(api_keys=[entry(KEY, max_n=2)]) as client:
        two = await client.post(
            GEN,
            json={"prompt": "fox", "model": "local/sketch", "size": "256x256", "n": 2},
            headers=bearer(KEY),
        )
        three = await client.post(
            GEN,
            json={"prompt": "fox", "model": "local/sketch", "size": "256x256", "n": 3},
            headers=bearer(KEY),
        )
    assert len(two.json()["data"]) == 2
    error = assert_envelope(three, 400, "invalid_request")
    assert error["param"] == "n"
    assert "at most 2" in error["message"]


def test_keys_come_from_the_environment_as_json_or_from_toml_tables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MESH_IMAGES_API_KEYS", json.dumps([entry(KEY, rpm=5)]))
    from_env = Settings.load()
    assert [(key.label, key.rpm) for key in from_env.api_keys] == [("alice", 5)]
    monkeypatch.delenv("MESH_IMAGES_API_KEYS")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[keys]]\nhash = "{hash_key(KEY)}"\nlabel = "alice"\nmodels = ["local/*"]\n'
        f'rpd = 100\nmax_n = 2\n\n[[keys]]\nhash = "{hash_key(OTHER)}"\nlabel = "bob"\n'
    )
    from_file = Settings.load(config)
    assert [key.label for key in from_file.api_keys] == ["alice", "bob"]
    assert from_file.api_keys[0].models == ("local/*",)
    assert (from_file.api_keys[0].rpd, from_file.api_keys[0].max_n) == (100, 2)
    monkeypatch.setenv("KEYS", "not a key list")  # only MESH_IMAGES_API_KEYS is read
    assert Settings().api_keys == ()


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ([entry(KEY), entry(KEY, "bob")], "a key hash is configured twice"),
        ([entry(KEY), entry(OTHER)], "label 'alice' is configured twice"),
        ([{"hash": "sha256:abc", "label": "x"}], "String should match pattern"),
        ([{**entry(KEY), "label": "has space"}], "String should match pattern"),
        ([{**entry(KEY), "rpm": 0}], "greater than or equal to 1"),
        ([{**entry(KEY), "key": KEY}], "Extra inputs are not permitted"),
    ],
)
def test_a_bad_key_configuration_stops_the_start(keys: list[dict[str, Any]], error: str) -> None:
    with pytest.raises(ValueError, match=error) as raised:
        Settings(api_keys=keys)
    assert KEY not in str(raised.value)


@pytest.mark.anyio
async def test_keys_create_prints_a_working_key_once_and_its_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["keys", "create", "--label", "ci", "--models", "local/*", "--rpm", "9", "--json"]
    assert main(argv) == 0
    created = json.loads(capsys.readouterr().out)
    key = WATCH.secret(created["key"])
    assert created["entry"] == {
        "hash": hash_key(key),
        "label": "ci",
        "models": ["local/*"],
        "rpm": 9,
    }
    async with app_client(api_keys=[created["entry"]]) as client:
        answer = await client.post(
            GEN,
            json={"prompt": "fox", "model": "local/sketch", "size": "256x256"},
            headers=bearer(key),
        )
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-requests"] == "9"

    assert main(["keys", "create", "--label", "ops", "--max-n", "2"]) == 0
    text = capsys.readouterr().out
    shown = WATCH.secret(text.split("stored nowhere): ", 1)[1].split()[0])
    assert f'[[keys]]\nhash = "{hash_key(shown)}"\nlabel = "ops"\nmax_n = 2' in text
    assert main(["keys", "create", "--label", "bad label"]) == 2

    assert main(["keys", "create", "--label", "ops", "--scope", "admin", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entry"]["scopes"] == ["admin"]
    with pytest.raises(ValueError, match="scopes"):
        GatewayKey.model_validate({**entry(KEY), "scopes": ["root"]})


def test_keys_hash_reads_the_key_from_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert main(["keys", "hash"]) == 0
    assert capsys.readouterr().out.strip() == hash_key(KEY)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["keys", "hash"]) == 2


@pytest.mark.parametrize(
    ("host", "keys", "insecure", "serves"),
    [
        ("127.0.0.1", False, False, True),
        ("127.0.0.5", False, False, True),
        ("localhost", False, False, True),
        ("::1", False, False, True),
        ("0.0.0.0", False, False, False),
        ("::", False, False, False),
        ("192.168.1.20", False, False, False),
        ("gateway.example", False, False, False),
        ("0.0.0.0", False, True, True),
        ("0.0.0.0", True, False, True),
    ],
)
def test_serve_binds_beyond_loopback_only_with_keys_or_insecure_no_auth(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    host: str,
    keys: bool,
    insecure: bool,
    serves: bool,
) -> None:
    runs: list[dict[str, Any]] = []

    def run(server: DrainingServer) -> None:
        runs.append({"host": server.config.host})
        server.started = True

    monkeypatch.setattr(DrainingServer, "run", run)
    if keys:
        monkeypatch.setenv("MESH_IMAGES_API_KEYS", json.dumps([entry(KEY)]))
    argv = ["serve", "--host", host, *(["--insecure-no-auth"] if insecure else [])]
    assert main(argv) == (0 if serves else 2)
    assert [run["host"] for run in runs] == ([host] if serves else [])
    if not serves:
        message = capsys.readouterr().err
        assert f"refusing to serve on {host} with no gateway keys" in message
        assert "--insecure-no-auth" in message


@pytest.mark.anyio
async def test_a_model_the_key_may_not_use_is_403_before_anything_is_said_about_it() -> None:
    # An alias naming another provider must not pass for that provider's model.
    spoof = {"openai/gpt-image-1.5": {"aliases": ["local/fast"]}}
    keys = [entry(KEY, models=["local/*"])]
    async with app_client(api_keys=keys, models=spoof, openai_api_key="sk-test-0000") as client:
        answers = [
            await client.post(GEN, json={"prompt": "fox", **fields}, headers=bearer(KEY))
            for fields in (
                {"model": "vertex/nano-banana-2", "size": "7x7"},  # a size check names sizes
                {"model": "vertex/nano-banana-2", "quality": "hd"},  # capabilities: 400
                {"model": "vertex/nano-banana-2"},  # provider not configured: 501
                {"model": "vertex/imagen-4"},  # retired: 410
                {"model": "local/fast"},  # the alias resolves to an OpenAI model
            )
        ]
        listed = await client.get("/v1/models", headers=bearer(KEY))
    for answer in answers:
        error = assert_envelope(answer, 403, "forbidden")
        assert error["param"] == "model"
        assert "sizes" not in error["message"]
    assert "gpt-image-1.5" in answers[-1].json()["error"]["message"]
    assert all(model["id"].startswith("local/") for model in listed.json()["data"])


@pytest.mark.anyio
async def test_a_retired_models_replacement_must_be_allowed_too() -> None:
    keys = [entry(KEY, models=["vertex/imagen-4*"])]
    async with app_client(api_keys=keys, retired_models="replace") as client:
        answer = await client.post(
            GEN, json={"prompt": "fox", "model": "vertex/imagen-4"}, headers=bearer(KEY)
        )
    error = assert_envelope(answer, 403, "forbidden")
    assert "imagen" not in error["message"]  # it names the replacement, which the key may not use
