"""A provider of your own: a model the gateway serves like any other (docs/providers.md)."""

from __future__ import annotations

import base64
import hashlib
import io
import time

from PIL import Image

from mesh_images_asgi import (
    GeneratedImage,
    GenerationJob,
    ImagesApp,
    PartialSink,
    ProviderResult,
    Settings,
    UpstreamError,
)


class SwatchProvider:
    """Paints each image in a colour drawn from the prompt: stands in for your upstream call."""

    name = "swatch"

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        if "fail" in job.request.prompt:  # how an upstream failure is reported
            raise UpstreamError("Swatch is down.", provider_code="internal_provider_error")
        width, height = (int(side) for side in (job.size or "64x64").split("x"))
        red, green, blue = hashlib.sha256(job.request.prompt.encode()).digest()[:3]
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (red, green, blue)).save(buffer, job.output_format)
        image = GeneratedImage(b64_json=base64.b64encode(buffer.getvalue()).decode())
        return ProviderResult(images=[image] * job.request.n, created=int(time.time()))

    async def aclose(self) -> None:
        """Nothing to release here; close your HTTP client in yours."""


MODELS = {  # catalog entries, as [models."swatch/solid"] in a TOML config would give them
    "swatch/solid": {"provider": "swatch", "upstream": "solid-v1", "max_n": 4,
                     "sizes": ["64x64", "256x256"], "default_size": "64x64"},
}  # fmt: skip
app = ImagesApp(Settings(models=MODELS), extra_providers={"swatch": SwatchProvider()})
