"""What a route is to the app: a handler, a body reader, and the app's face to the job routes.

Kept apart from ``app.py`` so that the job routes (``job_routes.py``) can name what they use of
the app (``JobsHost``) without importing it: the app imports them, not the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mesh_images_asgi._access.keys import GatewayKey
from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.asgi import Receive, Scope, Send
from mesh_images_asgi._domain.edit_inputs import EditInputs
from mesh_images_asgi._domain.schemas import ImageRequest
from mesh_images_asgi._observe.job_metrics import JobMetrics
from mesh_images_asgi._observe.outcome import Outcome
from mesh_images_asgi._routing.router import Plan, Routed
from mesh_images_asgi._routing.service import ImageService

__all__ = ["Handler", "JobsHost", "Reader"]

Handler = Callable[[Scope, Receive, Send, Outcome], Awaitable[None]]
"""Serves one route's request; the request's ``Outcome`` carries its id and collects its record."""
Reader = Callable[[Scope, Receive], Awaitable[tuple[ImageRequest, EditInputs | None]]]
"""Reads one request form: a generation's JSON, or an edit's form or JSON and its images."""


class JobsHost(Protocol):
    """What the job routes use of the app (``ImagesApp`` is one): the synchronous routes' own
    steps, so that a job is admitted, planned and answered exactly as a request is."""

    settings: Settings
    readers: dict[str, Reader]
    job_metrics: JobMetrics

    @property
    def service(self) -> ImageService: ...

    def check_open(self) -> None: ...

    async def admit(
        self, scope: Scope, send: Send, outcome: Outcome
    ) -> tuple[GatewayKey | None, Send]: ...

    def caller(self, scope: Scope, outcome: Outcome) -> GatewayKey | None: ...

    def observe_job(self, scope: Scope, route: str, request_id: str) -> Outcome: ...

    def finish_job(self, outcome: Outcome) -> None: ...

    def set_request_base(self, base: str) -> None: ...

    def key_named(self, label: str | None) -> GatewayKey | None: ...

    def plan(
        self,
        request: ImageRequest,
        key: GatewayKey | None,
        outcome: Outcome,
        inputs: EditInputs | None = None,
        scope: Scope | None = None,
    ) -> Plan: ...

    def answer(
        self, routed: Routed, outcome: Outcome
    ) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]: ...
