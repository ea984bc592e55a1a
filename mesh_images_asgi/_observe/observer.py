"""The observer: turns each request's ``Outcome`` into metrics, spans and an access log line.

Only the app imports this module; everything below the app fills the record
(``_observe/outcome.py``)
and reaches the observer through the record's ``Hooks``, never directly.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from time import perf_counter
from typing import TYPE_CHECKING, cast

from mesh_images_asgi._core.asgi import Scope
from mesh_images_asgi._observe import accesslog
from mesh_images_asgi._observe.metrics import Metrics
from mesh_images_asgi._observe.outcome import UNMATCHED, Outcome, make_current, release
from mesh_images_asgi._observe.tracing import Tracing

if TYPE_CHECKING:
    from mesh_images_asgi._domain.jobs import GenerationJob, ProviderResult
    from mesh_images_asgi._observe.tracing import Active

__all__ = ["Observer"]

logger = logging.getLogger("mesh_images_asgi")


class Observer:
    """One per app: starts each request's ``Outcome`` and observes it when it is finished."""

    def __init__(
        self,
        metrics: Metrics,
        tracing: Tracing,
        routes: Collection[str],
        *,
        quiet: Collection[str] = (),
        log_prompts: bool = False,
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.log_prompts = log_prompts
        self._routes = routes
        self._quiet = quiet
        accesslog.install()

    def start(self, scope: Scope, path: str, request_id: str) -> Outcome:
        """A record for this HTTP request (``path``: its route path, ``_asgi.route_path``), made
        current (with its span when tracing is on)."""
        route = path if path in self._routes else UNMATCHED
        outcome = Outcome(self, route, request_id, scope.get("method", ""))
        outcome.quiet = route in self._quiet
        make_current(outcome)
        tracing = self.tracing
        if tracing.pending:
            tracing.resolve()
        if tracing.tracer is not None and not outcome.quiet:
            outcome.span = tracing.start_request(scope, route if route != UNMATCHED else None)
        return outcome

    def finish(self, outcome: Outcome) -> None:
        """Observe ``outcome`` once: its span, its metrics, its log line."""
        total = perf_counter() - outcome.started
        try:
            if outcome.span is not None:
                active, outcome.span = cast("Active", outcome.span), None
                self.tracing.end_request(active, outcome)
            if not outcome.quiet:
                self.metrics.record(outcome, total)
                if accesslog.enabled():
                    accesslog.write(outcome, total)
        except Exception:
            logger.exception("mesh-images: observing request %s failed", outcome.request_id)
        finally:
            release(outcome)

    # Hooks: what a record reports while its request runs.

    def retried(self, model: str) -> None:
        self.metrics.retries(model).inc()

    def stream_opened(self) -> None:
        self.metrics.streams_open.inc()

    def stream_closed(self) -> None:
        self.metrics.streams_open.dec()

    def pinged(self) -> None:
        self.metrics.pings.inc()

    def attempt_started(self, job: GenerationJob, number: int) -> object:
        if self.tracing.tracer is None:
            return None
        return self.tracing.start_attempt(job, number)

    def attempt_ended(
        self,
        job: GenerationJob,
        seconds: float,
        label: str,
        span: object,
        result: ProviderResult | None,
    ) -> None:
        entry = job.entry
        self.metrics.upstream_duration(entry.id, entry.provider, label).observe(seconds)
        if span is not None:
            error = None if label == "ok" else label
            self.tracing.end_attempt(cast("Active", span), result, error)
