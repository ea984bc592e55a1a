"""Model lifecycle: the shipped catalog's ids and lifecycles, the retired-model policy's pieces
(size translation, refusals), ``mesh-images catalog check`` on small broken catalogs, and the
model list."""

from __future__ import annotations

import tomllib
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.errors import InvalidRequest, ModelRetired
from mesh_images_asgi._domain.catalog import Catalog, ModelEntry, load_catalog
from mesh_images_asgi._domain.catalog_check import check_catalog
from mesh_images_asgi._domain.schemas import ImageRequest
from mesh_images_asgi._routing.lifecycle import current_model, deprecation_headers, translate_size
from mesh_images_asgi.cli import main
from tests.helpers import app_client

TODAY = date(2026, 12, 7)


def shipped() -> dict[str, dict[str, Any]]:
    text = resources.files("mesh_images_asgi").joinpath("_domain/models.toml").read_text("utf-8")
    models: dict[str, dict[str, Any]] = tomllib.loads(text)["models"]
    return models


def test_every_shipped_entry_states_its_lifecycle_and_where_it_comes_from() -> None:
    for model_id, fields in shipped().items():
        assert fields.get("status") in {"active", "preview", "deprecated", "retired"}, model_id
        assert len(fields.get("source", "")) > 20, model_id
        if fields["status"] == "retired":
            assert isinstance(fields.get("shutdown_date"), date), model_id
            assert fields.get("replacement"), model_id


def test_no_served_model_calls_an_id_google_shut_down() -> None:
    catalog = load_catalog()
    for entry in catalog:
        if entry.status != "retired":
            assert not entry.upstream.endswith("-preview"), entry.id
            assert not entry.upstream.startswith("imagen-"), entry.id
    assert catalog.resolve("vertex/gemini-3-pro-image-preview").upstream == "gemini-3-pro-image"
    assert catalog.resolve("vertex/gemini-3.1-flash-image-preview").upstream == (
        "gemini-3.1-flash-image"
    )


def test_the_shipped_catalog_passes_its_check_today() -> None:
    findings = check_catalog(load_catalog(), TODAY)
    assert [f for f in findings if f.level == "error"] == []


@pytest.mark.parametrize(
    ("source", "target", "size", "expected"),
    [
        ("vertex/imagen-3", "vertex/gemini-3.1-flash-image", "1408x768", "1376x768"),  # 16:9
        ("vertex/imagen-3", "vertex/gemini-3.1-flash-image", "896x1280", "896x1200"),  # 3:4
        ("vertex/imagen-4", "vertex/gemini-3.1-flash-image", "2048x2048", "2048x2048"),  # 1:1 2K
        ("vertex/imagen-4-ultra", "vertex/gemini-3-pro-image", "1536x2816", "1536x2752"),  # 9:16
        ("vertex/nano-banana", "vertex/gemini-3.1-flash-image", "1536x672", "1584x672"),  # 21:9
        ("vertex/imagen-3", "vertex/gemini-3.1-flash-image", "16:9", "16:9"),  # a ratio: as is
        ("vertex/imagen-3", "vertex/gemini-3.1-flash-image", "auto", "auto"),
        ("vertex/imagen-3", "vertex/gemini-3.1-flash-image", None, None),
        ("vertex/imagen-4", "vertex/gemini-3.1-flash-lite-image", "2048x2048", "2048x2048"),
    ],
)
def test_a_size_becomes_the_size_it_means_on_the_replacement(
    source: str, target: str, size: str | None, expected: str | None
) -> None:
    catalog = load_catalog()
    assert translate_size(catalog.resolve(source), catalog.resolve(target), size) == expected


def request(**fields: Any) -> ImageRequest:
    return ImageRequest.model_validate({"prompt": "a fox", **fields})


def test_replace_refuses_what_the_replacement_cannot_render() -> None:
    # Flash Lite renders 1K only: Imagen 4's 2K square has no counterpart there.
    catalog = load_catalog(
        {"vertex/imagen-4.0-generate-001": {"replacement": "vertex/nano-banana-2-lite"}}
    )
    imagen = catalog.resolve("vertex/imagen-4")
    with pytest.raises(InvalidRequest) as caught:
        current_model(catalog, imagen, request(size="2048x2048"), "replace")
    assert caught.value.param == "size"
    assert "vertex/gemini-3.1-flash-lite-image" in caught.value.message
    served, translated = current_model(catalog, imagen, request(size="1408x768"), "replace")
    assert (served.id, translated.size) == ("vertex/gemini-3.1-flash-lite-image", "1376x768")


def test_replace_follows_a_chain_of_retired_replacements() -> None:
    catalog = load_catalog(
        {"vertex/imagen-3.0-generate-002": {"replacement": "vertex/gemini-2.5-flash-image"}}
    )
    served, _ = current_model(catalog, catalog.resolve("vertex/imagen-3"), request(), "replace")
    assert served.id == "vertex/gemini-3.1-flash-image"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"replacement": None}, "shut it down on 2026-08-17."),
        ({"replacement": "vertex/nowhere"}, "Its replacement 'vertex/nowhere' is not served here."),
    ],
)
@pytest.mark.parametrize("policy", ["refuse", "replace"])
def test_without_a_usable_replacement_a_retired_model_is_refused(
    fields: dict[str, Any], message: str, policy: Any
) -> None:
    catalog = load_catalog({"vertex/imagen-3.0-generate-002": fields})
    with pytest.raises(ModelRetired) as caught:
        current_model(catalog, catalog.resolve("vertex/imagen-3"), request(), policy)
    assert message in caught.value.message
    assert caught.value.status == 410


def test_serve_and_live_models_pass_through() -> None:
    catalog = load_catalog()
    imagen, gemini = catalog.resolve("vertex/imagen-3"), catalog.resolve("vertex/nano-banana-2")
    asked = request(size="1408x768")
    assert current_model(catalog, imagen, asked, "serve") == (imagen, asked)
    assert current_model(catalog, gemini, asked, "refuse") == (gemini, asked)


def test_deprecation_headers_only_for_deprecated_models_with_a_date() -> None:
    entry = load_catalog().resolve("local/sketch")
    assert deprecation_headers(entry) == []
    dated = entry.model_copy(update={"status": "deprecated", "shutdown_date": date(2026, 12, 31)})
    assert deprecation_headers(dated) == [
        (b"deprecation", b"@1798675200"),  # 2026-12-31T00:00:00Z
        (b"sunset", b"Thu, 31 Dec 2026 00:00:00 GMT"),
    ]
    undated = entry.model_copy(update={"status": "deprecated"})
    assert deprecation_headers(undated) == []


# --- catalog check ------------------------------------------------------------------------------


def model(name: str, **fields: Any) -> ModelEntry:
    return ModelEntry(id=f"local/{name}", provider="local", upstream=name, **fields)


@pytest.mark.parametrize(
    ("entries", "level", "message"),
    [
        (
            [model("old", status="active", shutdown_date=date(2026, 12, 1))],
            "error",
            "shut down on 2026-12-01 but marked 'active'",
        ),
        (
            [model("old", status="deprecated", shutdown_date=date(2026, 12, 7))],
            "error",
            "mark it retired",
        ),
        (
            [model("soon", status="deprecated", shutdown_date=date(2026, 12, 20))],
            "warning",
            "in 13 day(s)",
        ),
        ([model("x", status="deprecated")], "error", "without a shutdown_date"),
        (
            [model("x", status="retired", replacement="local/missing")],
            "error",
            "replacement 'local/missing' is not in the catalog",
        ),
        (
            [
                model("x", status="retired", replacement="local/y"),
                model("y", status="retired", replacement="local/z"),
                model("z"),
            ],
            "error",
            "replacement 'local/y' is itself retired",
        ),
        (
            [
                model("x", status="retired", aliases=("local/pointer",), replacement="local/z"),
                model("z"),
            ],
            "warning",
            "alias 'local/pointer' names this retired model",
        ),
        ([model("x", status="retired")], "warning", "retired with no replacement"),
    ],
)
def test_catalog_check_finds_each_kind_of_problem(
    entries: list[ModelEntry], level: str, message: str
) -> None:
    findings = check_catalog(Catalog(entries), TODAY)
    assert [(f.level, f.model) for f in findings if message in f.message] == [
        (level, entries[0].id)
    ]


def test_catalog_check_is_quiet_on_a_sound_catalog() -> None:
    entries = [
        model("a", status="deprecated", shutdown_date=date(2027, 3, 1), replacement="local/b"),
        model("b", status="preview"),
        model("c", status="retired", shutdown_date=date(2026, 1, 1), replacement="local/b"),
    ]
    assert check_catalog(Catalog(entries), TODAY) == []


def test_the_command_exits_non_zero_on_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["catalog", "check", "--today", "2026-12-07"]) == 0
    shipped_out = capsys.readouterr().out
    assert "0 error(s)" in shipped_out
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[models."vertex/gemini-3-pro-image"]\nstatus = "deprecated"\nshutdown_date = 2026-12-01\n'
    )
    assert main(["catalog", "check", "--config", str(config), "--today", "2026-12-07"]) == 1
    out = capsys.readouterr().out
    assert "error: vertex/gemini-3-pro-image: shut down on 2026-12-01" in out
    assert main(["catalog", "check", "--config", str(tmp_path / "missing.toml")]) == 2


# --- the model list -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_model_list_shows_lifecycle_and_hides_retired_models() -> None:
    models = {"local/old": {"provider": "local", "upstream": "sketch", "status": "retired"}}
    async with app_client(models=models) as client:
        listed = (await client.get("/v1/models")).json()["data"]
        everything = (await client.get("/v1/models?include_retired=true")).json()["data"]
    assert [m["id"] for m in listed] == ["local/sketch"]
    assert listed[0]["lifecycle"] == {
        "status": "active",
        "shutdown_date": None,
        "replacement": None,
    }
    assert [m["id"] for m in everything] == ["local/sketch", "local/old"]
    assert everything[1]["lifecycle"]["status"] == "retired"


def test_the_policy_comes_from_the_environment_or_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().retired_models == "refuse"
    config = tmp_path / "gateway.toml"
    config.write_text('retired_models = "replace"\n')
    assert Settings.load(config).retired_models == "replace"
    monkeypatch.setenv("MESH_IMAGES_RETIRED_MODELS", "serve")
    assert Settings.load(config).retired_models == "serve"  # the environment wins
    monkeypatch.setenv("MESH_IMAGES_RETIRED_MODELS", "ignore")
    with pytest.raises(ValueError, match="refuse"):
        Settings()
