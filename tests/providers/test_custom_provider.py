"""The provider of your own from docs/providers.md (examples/custom_provider.py), as a user runs it:
served, validated, failing and listed like the shipped providers, beside them."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from examples import custom_provider
from tests.helpers import client_for

GEN = "/v1/images/generations"
EXAMPLE = Path(custom_provider.__file__)


def test_the_example_is_short_and_is_what_the_docs_show() -> None:
    source = EXAMPLE.read_text()
    assert len([line for line in source.splitlines() if line.strip()]) <= 40
    docs = (Path(__file__).parents[2] / "docs" / "providers.md").read_text()
    assert source.strip() in docs


@pytest.mark.anyio
async def test_a_provider_of_your_own_serves_its_models_beside_the_shipped_ones() -> None:
    async with client_for(custom_provider.app) as client:
        answer = await client.post(
            GEN,
            json={"model": "swatch/solid", "prompt": "teal", "n": 2, "size": "256x256",
                  "response_format": "b64_json"},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        images = [base64.b64decode(item["b64_json"]) for item in answer.json()["data"]]
        assert len(images) == 2
        image = Image.open(io.BytesIO(images[0]))
        assert (image.format, image.size) == ("PNG", (256, 256))
        assert len(image.getcolors() or []) == 1  # one colour, drawn from the prompt

        refused = await client.post(GEN, json={"model": "swatch/solid", "prompt": "p", "n": 5})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "n"

        failed = await client.post(GEN, json={"model": "swatch/solid", "prompt": "fail"})
        error = failed.json()["error"]
        assert (failed.status_code, error["code"]) == (502, "upstream_error")
        assert error["provider_code"] == "internal_provider_error"

        shipped = await client.post(GEN, json={"model": "local/sketch", "prompt": "p"})
        assert shipped.status_code == 200

        listed = {model["id"] for model in (await client.get("/v1/models")).json()["data"]}
        assert {"swatch/solid", "local/sketch"} <= listed
