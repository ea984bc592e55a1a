"""Prometheus metrics of one app, in the app's own ``CollectorRegistry``.

Every ``ImagesApp`` has a ``Metrics`` (``app.metrics``), whose registry is not the process-wide
default one: two apps in one process, and tests, do not collide. The standalone server answers
``GET /metrics`` from it; a host serves it with one line (``docs/operations.md``)::

    host.mount("/metrics", images.metrics.asgi_app())

or passes ``Metrics(registry=prometheus_client.REGISTRY)`` to record into the default registry it
already exposes.

Most series are updated once per request, when the request's ``Outcome`` is finished
(``_observe/outcome.py``); upstream attempts, retries, pings and the open-streams gauge as they
happen.
Circuit states, bulkhead occupancy and in-flight generations are read from the app when scraped,
at no cost to requests. Label values come from closed sets only (routes, catalog model ids,
provider names, status codes, error codes, gateway key labels): never a prompt, a key, a request
id or a name a client typed. The series written on every request (requests, durations,
overhead, images, tokens) are ``_hot_metrics`` ones: plain numbers, exposed through
prometheus-client when scraped. The others are prometheus-client's own, their children cached
by label values (``labels()`` costs about 1 µs; a dict hit a tenth of that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from mesh_images_asgi._core.asgi import ASGIApp
from mesh_images_asgi._observe.hot_metrics import HotCounter, HotHistogram

if TYPE_CHECKING:
    from mesh_images_asgi._observe.outcome import Outcome

__all__ = ["DURATION_BUCKETS", "OVERHEAD_BUCKETS", "BulkheadLoads", "CircuitStates", "Metrics"]

CircuitStates: TypeAlias = Callable[[], Iterable[tuple[str, str]]]
"""Each model's circuit state now: ``(model, "closed" | "open" | "half-open")``."""
BulkheadLoads: TypeAlias = Callable[[], Iterable[tuple[str, int, int]]]
"""Each provider's bulkhead now: ``(provider, active, waiting)``."""

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300,
)  # fmt: skip
"""Seconds: from a models listing to a slow generation at the default 300 s deadline."""
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
"""Seconds the gateway adds to the upstream's time."""

_CIRCUIT_STATES = ("closed", "open", "half-open")
_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)


class _Children(Generic[_Metric]):
    """A labelled metric's children, cached by label values."""

    def __init__(self, metric: _Metric) -> None:
        self.metric: _Metric = metric
        self._children: dict[tuple[str, ...], _Metric] = {}

    def __call__(self, *values: str) -> _Metric:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Metrics:
    """The app's metrics (see ``docs/operations.md`` for the reference table).

    **Parameters:**

    * **registry** - where to register them; by default a new ``CollectorRegistry`` of their own.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = HotCounter(
            "mesh_images_requests",
            "Requests answered, by route, model, provider and HTTP status (a stream: the "
            "status of its error event, 499 when the client left).",
            ("route", "model", "provider", "status", "stream"),
            registry=r,
        )
        self.request_duration = HotHistogram(
            "mesh_images_request_duration_seconds",
            "Total time of a request in the gateway, first byte in to last byte out.",
            ("route", "model", "stream"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_duration = HotHistogram(
            "mesh_images_upstream_duration_seconds",
            "Time of one upstream attempt, by outcome (ok or the error code).",
            ("model", "provider", "outcome"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.overhead = HotHistogram(
            "mesh_images_gateway_overhead_seconds",
            "Time a generation spent in the gateway outside upstream attempts (body read, "
            "validation, backoff, writing the answer).",
            ("stream",),
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.images = HotCounter(
            "mesh_images_images",
            "Images generated upstream.",
            ("model", "provider"),
            registry=r,
        )
        self.cost = _Children(
            Counter(
                "mesh_images_cost_usd",
                "Estimated upstream cost in USD from catalog prices; billing is 'client' when "
                "the request brought its own provider key.",
                ("model", "provider", "billing"),
                registry=r,
            )
        )
        self.tokens = HotCounter(
            "mesh_images_tokens",
            "Tokens the upstream reported, by direction (input, output).",
            ("model", "provider", "direction"),
            registry=r,
        )
        self.streams_open = Gauge(
            "mesh_images_streams_open", "SSE streams being written now.", registry=r
        )
        self.pings = Counter(
            "mesh_images_stream_pings", "Keep-alive ': ping' comments written.", registry=r
        )
        self.retries = _Children(
            Counter(
                "mesh_images_retries",
                "Retries of a model after a transient upstream failure.",
                ("model",),
                registry=r,
            )
        )
        self.fallbacks = _Children(
            Counter(
                "mesh_images_fallbacks",
                "Requests served by a fallback model instead of the requested one.",
                ("requested_model", "model"),
                registry=r,
            )
        )
        self.rate_limited = _Children(
            Counter(
                "mesh_images_rate_limited",
                "Requests refused by a gateway key's rpm/rpd limit (429), by key label.",
                ("key_label",),
                registry=r,
            )
        )
        self._circuits: CircuitStates = tuple
        self._bulkheads: BulkheadLoads = tuple
        self._in_flight: Callable[[], int] = lambda: 0
        self._bound = False
        r.register(_LiveState(self))

    def bind(
        self, *, circuits: CircuitStates, bulkheads: BulkheadLoads, in_flight: Callable[[], int]
    ) -> None:
        """Read circuit states, bulkheads and in-flight generations when scraped, from these
        snapshots (an app's; the metrics know nothing of what they read)."""
        if self._bound:
            raise ValueError("this Metrics already belongs to an app; give each app its own")
        self._circuits, self._bulkheads, self._in_flight = circuits, bulkheads, in_flight
        self._bound = True

    def record(self, outcome: Outcome, total: float) -> None:
        """Count one finished request (``Outcome.finish``)."""
        o = outcome
        stream = "true" if o.stream else "false"
        self.requests(o.route, o.model, o.provider, str(o.status), stream).inc()
        self.request_duration(o.route, o.model, stream).observe(total)
        if o.attempts:
            self.overhead(stream).observe(max(0.0, total - o.upstream))
        if o.images:
            self.images(o.model, o.provider).inc(o.images)
        if o.cost is not None:
            self.cost(o.model, o.provider, o.billing).inc(float(o.cost))
        if o.usage is not None:
            for tokens, direction in (
                (o.usage.prompt_tokens, "input"),
                (o.usage.completion_tokens, "output"),
            ):
                if tokens > 0:
                    self.tokens(o.model, o.provider, direction).inc(tokens)
        if o.fallback and o.requested is not None:
            self.fallbacks(o.requested, o.model).inc()
        if o.error == "rate_limit_exceeded" and o.key is not None:
            self.rate_limited(o.key).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, bytes]:
        """The scrape body and its content type (OpenMetrics when ``accept`` asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type.encode()

    def asgi_app(self) -> ASGIApp:
        """An ASGI app serving these metrics (prometheus-client's), to mount in a host."""
        app: ASGIApp = make_asgi_app(registry=self.registry)
        return app


class _LiveState:
    """Gauges read from the app at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        circuits = GaugeMetricFamily(
            "mesh_images_circuit_state",
            "1 for the state each model's circuit breaker is in (closed, open, half-open).",
            labels=("model", "state"),
        )
        active = GaugeMetricFamily(
            "mesh_images_bulkhead_active",
            "Upstream calls in progress, per provider bulkhead.",
            labels=("provider",),
        )
        waiting = GaugeMetricFamily(
            "mesh_images_bulkhead_waiting",
            "Upstream calls waiting for a slot, per provider bulkhead.",
            labels=("provider",),
        )
        for model, state in self._metrics._circuits():
            for name in _CIRCUIT_STATES:
                circuits.add_metric((model, name), 1.0 if name == state else 0.0)
        for provider, busy, queued in self._metrics._bulkheads():
            active.add_metric((provider,), busy)
            waiting.add_metric((provider,), queued)
        yield circuits
        yield active
        yield waiting
        yield GaugeMetricFamily(
            "mesh_images_generations_in_flight",
            "Generations being served now (JSON and streams).",
            value=self._metrics._in_flight(),
        )
