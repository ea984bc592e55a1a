"""Helpers of the operations tests: a scripted ``openai`` provider, an app around it, and a
Prometheus scrape parsed into exact sample values."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mesh_images_asgi import ImagesApp, Settings
from mesh_images_asgi._domain.catalog import load_catalog
from mesh_images_asgi._domain.jobs import (
    GeneratedImage,
    GenerationJob,
    PartialSink,
    Provider,
    ProviderResult,
)
from mesh_images_asgi._domain.usage import Usage
from mesh_images_asgi.providers.local import LocalProvider
from tests.helpers import client_for

__all__ = ["IMAGE_B64", "Samples", "Scripted", "ops_app", "result", "scrape"]

IMAGE_B64 = "aW1hZ2U="

Step = ProviderResult | Exception | Callable[[GenerationJob], Awaitable[ProviderResult]]


def result(n: int = 1, usage: Usage | None = None) -> ProviderResult:
    return ProviderResult(
        images=[GeneratedImage(b64_json=IMAGE_B64) for _ in range(n)], created=1, usage=usage
    )


class Scripted:
    """The ``openai`` provider answering with ``steps`` in order, then with one image per ``n``."""

    name = "openai"

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.calls: list[GenerationJob] = []

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        self.calls.append(job)
        step = self.steps.pop(0) if self.steps else result(job.request.n)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, ProviderResult):
            return step
        return await step(job)

    async def aclose(self) -> None:
        return None


@asynccontextmanager
async def ops_app(
    openai: Scripted | None = None,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[ImagesApp, httpx.AsyncClient]]:
    """A standalone-shaped app (``/metrics``, ``/healthz``) over ``local`` and ``openai``."""
    settings.setdefault("local_latency", 0)
    settings.setdefault("retry_backoff", 0)
    providers: dict[str, Provider] = {
        "local": LocalProvider(latency=0),
        "openai": openai or Scripted(),
    }
    app = ImagesApp(
        Settings(**settings),
        providers=providers,
        catalog=load_catalog(models),
        health=True,
        metrics_route=True,
    )
    async with client_for(app) as client:
        yield app, client


class Samples:
    """One scrape: ``value(name, **labels)`` is the exact value of one sample (0.0 if absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= ls)

    def names(self) -> set[str]:
        return {name for name, _ in self.values}


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Samples(response.text)
