"""The image service: resolve the model, check the request against it, call its provider.

It sits between the ASGI layer (which hands it validated requests) and the providers (which know
nothing above them), and it owns the providers' lifetime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import anyio

from .capabilities import check_request
from .catalog import Catalog, ModelEntry
from .config import Settings
from .errors import GatewayTimeout, NotImplementedByGateway, ValidationFailed
from .providers.base import GenerationJob, PartialSink, Provider, ProviderResult
from .schemas import ImageRequest

__all__ = ["ImageService"]

logger = logging.getLogger("mesh_images_asgi")


class ImageService:
    """Turns ``ImageRequest``s into ``ProviderResult``s."""

    def __init__(
        self, settings: Settings, catalog: Catalog, providers: Mapping[str, Provider]
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.providers = dict(providers)
        self._created = int(time.time())

    def enabled_models(self) -> list[ModelEntry]:
        return [entry for entry in self.catalog if entry.provider in self.providers]

    def models_page(self) -> dict[str, Any]:
        """The ``GET /v1/models`` body: the models of enabled providers."""
        return {
            "object": "list",
            "data": [entry.public(self._created) for entry in self.enabled_models()],
        }

    def prepare(self, request: ImageRequest) -> GenerationJob:
        """Resolve and check; raise the 4xx/501 that says why it cannot be served."""
        name = request.model or self.settings.default_model
        if name is None:
            raise ValidationFailed(
                "Request validation failed.",
                details=[
                    {
                        "loc": ["body", "model"],
                        "msg": "Field required (no default model is configured)",
                        "type": "missing",
                    }
                ],
            )
        entry = self.catalog.resolve(name)
        check_request(entry, request)
        if entry.provider not in self.providers:
            raise NotImplementedByGateway(
                f"Provider {entry.provider!r} of model {entry.id!r} is not configured on this "
                "gateway; see docs/configuration.md for its credentials."
            )
        return GenerationJob(
            entry=entry,
            request=request,
            size=entry.resolve_size(request.size),
            output_format=request.output_format or entry.output_formats[0],
        )

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        """Run the job on its provider under the upstream deadline."""
        provider = self.providers[job.entry.provider]
        deadline = job.entry.upstream_timeout or self.settings.upstream_timeout
        with anyio.move_on_after(deadline) as scope:
            return await provider.generate(job, on_partial)
        assert scope.cancelled_caught
        raise GatewayTimeout(
            f"The upstream did not finish within {deadline:g} s.", provider_code="provider_timeout"
        )

    def log_enabled(self) -> None:
        models = ", ".join(entry.id for entry in self.enabled_models())
        logger.info("mesh-images: providers enabled: %s", ", ".join(sorted(self.providers)))
        logger.info("mesh-images: models served: %s", models)

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
