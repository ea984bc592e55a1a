"""The one interface every upstream implements, and the plain data it exchanges.

Providers know nothing of ASGI, HTTP responses to our client, or SSE: they take a validated
``GenerationJob`` and return a ``ProviderResult`` (raising ``GatewayError`` subclasses on
failure). A provider that streams natively hands partial images to ``on_partial`` as they come.
Providers know nothing of retries or fallbacks (``_routing/router.py``): one call is one attempt,
made with
``job.credentials`` when the client brought its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mesh_images_asgi._domain.catalog import ModelEntry
from mesh_images_asgi._domain.edit_inputs import EditInputs
from mesh_images_asgi._domain.schemas import ImageRequest
from mesh_images_asgi._domain.usage import Usage

__all__ = [
    "GeneratedImage",
    "GenerationJob",
    "JobKind",
    "PartialImage",
    "PartialSink",
    "Provider",
    "ProviderResult",
]


JobKind = Literal["generation", "edit"]
"""What a job makes: a new image, or an edit of given ones (it names the stream's events)."""


@dataclass(frozen=True, slots=True)
class GenerationJob:
    """A request checked against its model, with the values the gateway resolved for it.

    An edit is the same job with ``inputs`` (its images, mask and operation): it takes the same
    path through routing, retries, fallbacks, keys, limits and the stream writer; ``kind`` tells
    the providers (and a stream dialect's event names) which one it is.
    """

    entry: ModelEntry
    request: ImageRequest
    size: str | None
    """Concrete ``WxH``, ``"auto"``, or None (no size sent and the model has no default)."""
    output_format: str
    """The format the images will be in (the request's, or the model's first)."""
    client_credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Credentials the client brought (BYOK), by provider name; they live only as long as the
    request and never reach a log line."""
    kind: JobKind = "generation"
    inputs: EditInputs | None = field(default=None, repr=False)
    """The images an edit works on (``kind`` ``"edit"``); None for a generation."""

    @property
    def extra_fields(self) -> dict[str, Any]:
        return self.request.extra_fields()

    @property
    def credentials(self) -> str | None:
        """The client's own credentials for this job's provider; None: use the gateway's."""
        return self.client_credentials.get(self.entry.provider)


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One finished image: base64 data or an upstream URL."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class PartialImage:
    """A partial image of a natively streaming upstream."""

    b64_json: str
    index: int


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """What the upstream returned, normalized; optional fields stay None unless it returned them."""

    images: list[GeneratedImage]
    created: int
    output_format: str | None = None
    background: str | None = None
    quality: str | None = None
    size: str | None = None
    usage: Usage | None = None
    """Token counts, when the upstream reported them (parsed once, by the provider)."""


PartialSink = Callable[[PartialImage], Awaitable[None]]


class Provider(Protocol):
    """An upstream that generates images."""

    name: str

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        """Generate ``job.request.n`` images; raise ``GatewayError`` on failure."""
        ...

    async def aclose(self) -> None:
        """Release what the provider holds (connections, token caches)."""
        ...
