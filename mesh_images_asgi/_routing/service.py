"""The image service: resolve the model, check the request against it, route it to a provider.

It sits between the ASGI layer (which hands it validated requests) and the providers (which know
nothing above them), and it owns the providers' lifetime and the routing state they share (a
circuit breaker per model, a bulkhead per provider; see ``_routing/router.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from mesh_images_asgi._access.keys import forbidden_model
from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.bulkhead import Bulkhead
from mesh_images_asgi._core.errors import (
    GatewayError,
    ModelNotFound,
    NotImplementedByGateway,
    ValidationFailed,
)
from mesh_images_asgi._domain.capabilities import check_request
from mesh_images_asgi._domain.catalog import Catalog, ModelEntry
from mesh_images_asgi._domain.edit_inputs import EditInputs
from mesh_images_asgi._domain.jobs import GenerationJob, PartialSink, Provider
from mesh_images_asgi._domain.schemas import CONTRACT_QUALITIES, ImageRequest, unknown_quality
from mesh_images_asgi._routing.byok import ClientKeys
from mesh_images_asgi._routing.lifecycle import Warnings, current_model
from mesh_images_asgi._routing.publisher import Publisher
from mesh_images_asgi._routing.router import (
    Plan,
    RetryPolicy,
    Routed,
    Router,
    breakers_from_settings,
)

__all__ = ["UNBOUNDED_PROVIDERS", "ImageService"]

logger = logging.getLogger("mesh_images_asgi")

UNBOUNDED_PROVIDERS = frozenset({"local"})
"""Providers without an upstream bulkhead: the embedded renderer has no upstream to protect (its
CPU work has its own bound, in ``providers/local.py``)."""


class ImageService:
    """Turns ``ImageRequest``s into routed ``ProviderResult``s."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        providers: Mapping[str, Provider],
        publisher: Publisher | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        """Hosts ``url`` answers' images (``_store/base.py``); None: they stay ``data:`` URLs."""
        self.catalog = catalog
        self.providers = dict(providers)
        self.created = int(time.time())
        """When the models were loaded: the ``created`` of every model object."""
        self._warnings = Warnings()
        self._qualities = CONTRACT_QUALITIES.union(*(entry.qualities for entry in catalog))
        self.router = Router(
            self.providers,
            RetryPolicy.from_settings(settings),
            breakers_from_settings(settings),
            {
                name: Bulkhead(name, settings.bulkhead_limit, settings.bulkhead_queue)
                for name in self.providers
                if name not in UNBOUNDED_PROVIDERS
            },
        )

    def enabled_models(self) -> list[ModelEntry]:
        return [entry for entry in self.catalog if entry.provider in self.providers]

    def prepare(
        self,
        request: ImageRequest,
        allow: Callable[[ModelEntry], bool] | None = None,
        inputs: EditInputs | None = None,
    ) -> GenerationJob:
        """Resolve and check the requested model; raise the 4xx/501 that says why it cannot be
        served. Without ``model``, the first of ``models`` (or the default model) is requested.
        With ``inputs`` the job is an edit of them.

        Order matters: a model ``allow`` refuses is 403 before anything else is said about it
        (its capabilities, whether its provider is configured), so a key learns nothing of the
        models it may not use; ``allow`` sees the resolved entry, never the name as sent."""
        if request.quality is not None and request.quality not in self._qualities:
            raise unknown_quality(request.quality)
        name = request.model or (request.models[0] if request.models else None)
        name = name or self.settings.default_model
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
        if allow is not None and not allow(entry):
            raise forbidden_model(entry)
        served, request = current_model(self.catalog, entry, request, self.settings.retired_models)
        if served is not entry and allow is not None and not allow(served):
            raise forbidden_model(served)  # a retired model's replacement must be allowed too
        entry = served
        self._warnings.requested(entry)
        check_request(entry, request, inputs)
        if entry.provider not in self.providers:
            raise NotImplementedByGateway(
                f"Provider {entry.provider!r} of model {entry.id!r} is not configured on this "
                "gateway; see docs/configuration.md for its credentials."
            )
        return self._job(entry, request, {}, inputs)

    def plan(
        self,
        request: ImageRequest,
        *,
        keys: ClientKeys | None = None,
        allow: Callable[[ModelEntry], bool] | None = None,
        inputs: EditInputs | None = None,
    ) -> Plan:
        """The requested model's job and the fallbacks that can serve the request.

        Fallbacks are the request's ``models`` (unknown names: 404, ``param`` ``models``) or else
        the model's configured ``fallbacks``. One that cannot serve the request (capabilities,
        provider not configured, not allowed by ``allow``) is skipped, and the reason kept. The
        requested model itself, not allowed by ``allow``, is 403 ``forbidden``.
        """
        primary = self.prepare(request, allow, inputs)
        credentials = keys.resolve(primary.entry.provider) if keys else {}
        job = replace(primary, client_credentials=credentials) if credentials else primary
        fallbacks: list[GenerationJob] = []
        skipped: list[str] = []
        seen = {job.entry.id}
        for entry in self._fallback_entries(request, job.entry):
            if entry.id in seen:
                continue
            seen.add(entry.id)
            reason = self._unusable(entry, request, allow, inputs)
            if reason is None:
                fallbacks.append(self._job(entry, request, credentials, inputs))
            else:
                skipped.append(f"{entry.id} skipped: {reason}")
        deadline = job.entry.upstream_timeout or self.settings.upstream_timeout
        return Plan(job, deadline, tuple(fallbacks), tuple(skipped))

    async def generate(self, plan: Plan, on_partial: PartialSink | None = None) -> Routed:
        """Serve ``plan`` with retries and fallbacks under its deadline (``_routing/router.py``);
        when the images are to be hosted, the publisher stores them once the router is done."""
        routed = await self.router.run(plan, on_partial)
        if self.publisher is None or not self.publisher.wants(plan.job):
            return routed
        return await self.publisher.publish(routed)

    def circuit_states(self) -> list[tuple[str, str]]:
        """Each model's circuit state, for the metrics (``Metrics.bind``)."""
        return [(model, breaker.state) for model, breaker in sorted(self.router.breakers.items())]

    def bulkhead_loads(self) -> list[tuple[str, int, int]]:
        """Each provider's bulkhead: active and waiting calls, for the metrics."""
        return [
            (provider, bulkhead.active, bulkhead.waiting)
            for provider, bulkhead in sorted(self.router.bulkheads.items())
        ]

    def log_enabled(self) -> None:
        models = ", ".join(entry.id for entry in self.enabled_models())
        logger.info("mesh-images: providers enabled: %s", ", ".join(sorted(self.providers)))
        logger.info("mesh-images: models served: %s", models)

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        if self.publisher is not None:
            await self.publisher.store.aclose()

    def _job(
        self,
        entry: ModelEntry,
        request: ImageRequest,
        credentials: Mapping[str, str],
        inputs: EditInputs | None = None,
    ) -> GenerationJob:
        return GenerationJob(
            entry=entry,
            request=request,
            # An edit without a size keeps its input's: no model default is put in its place.
            size=None
            if inputs is not None and request.size is None
            else entry.resolve_size(request.size),
            output_format=request.output_format or entry.output_formats[0],
            client_credentials=credentials,
            kind="generation" if inputs is None else "edit",
            inputs=inputs,
        )

    def _fallback_entries(self, request: ImageRequest, primary: ModelEntry) -> list[ModelEntry]:
        if request.models is None:
            return [self.catalog.resolve(name) for name in primary.fallbacks]
        names = request.models if request.model else request.models[1:]
        entries = []
        for name in names:
            try:
                entries.append(self.catalog.resolve(name))
            except ModelNotFound as error:
                raise ModelNotFound(error.message, param="models") from None
        return entries

    def _unusable(
        self,
        entry: ModelEntry,
        request: ImageRequest,
        allow: Callable[[ModelEntry], bool] | None,
        inputs: EditInputs | None,
    ) -> str | None:
        if allow is not None and not allow(entry):
            return "this API key may not use it"
        if entry.status == "retired" and self.settings.retired_models != "serve":
            return "retired by its provider"
        if entry.provider not in self.providers:
            return f"provider {entry.provider!r} is not configured"
        try:
            check_request(entry, request, inputs)
        except GatewayError as error:
            return error.message
        return None
