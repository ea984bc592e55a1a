"""The catalog: shipped data, aliases, user overrides, and its own consistency checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mesh_images_asgi._core.errors import ModelNotFound
from mesh_images_asgi._domain.catalog import Catalog, ModelEntry, load_catalog


def test_shipped_catalog_resolves_ids_and_aliases() -> None:
    catalog = load_catalog()
    assert catalog.resolve("local/default").id == "local/sketch"
    assert catalog.resolve("vertex/imagen-3").upstream.startswith("imagen-3")
    with pytest.raises(ModelNotFound):
        catalog.resolve("openai/dall-e-1")
    for entry in catalog:
        assert entry.id.startswith(entry.provider + "/")


def test_user_overrides_merge_field_by_field_and_add_models() -> None:
    catalog = load_catalog(
        {
            "local/sketch": {"max_n": 2},
            "local/tiny": {
                "provider": "local",
                "upstream": "sketch",
                "sizes": ["64x64"],
                "default_size": "64x64",
                "aliases": ["tiny"],
            },
        }
    )
    sketch = catalog.resolve("local/sketch")
    assert sketch.max_n == 2
    assert "webp" in sketch.output_formats  # untouched fields stay
    assert catalog.resolve("tiny").id == "local/tiny"


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "openai/x", "provider": "local", "upstream": "x"},  # prefix mismatch
        {"id": "local/x", "provider": "local", "upstream": "x", "sizes": ["big"]},
        {"id": "local/x", "provider": "local", "upstream": "x", "max_n": 11},
        {"id": "local/x", "provider": "local", "upstream": "x", "unknown": 1},
    ],
)
def test_bad_entries_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModelEntry.model_validate(fields)


def test_an_alias_may_not_name_two_models() -> None:
    a = ModelEntry(id="local/a", provider="local", upstream="a", aliases=("x",))
    b = ModelEntry(id="local/b", provider="local", upstream="b", aliases=("x",))
    with pytest.raises(ValueError, match="used by"):
        Catalog([a, b])


def test_resolve_size() -> None:
    entry = load_catalog().resolve("local/sketch")
    assert entry.resolve_size(None) == "1024x1024"
    assert entry.resolve_size("auto") == "1024x1024"
    assert entry.resolve_size("16:9") == "1344x768"
    assert entry.resolve_size("200x120") == "200x120"
    openai = load_catalog().resolve("openai/gpt-image-2")
    assert openai.resolve_size("auto") == "auto"
    assert openai.resolve_size(None) is None
