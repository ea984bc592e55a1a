"""The metrics of async jobs, in the app's registry (``Metrics.registry``).

``mesh_images_jobs{status}`` counts transitions (a job counts once as ``queued`` at submission and
once more with the status it ends in); ``mesh_images_job_queue_depth`` is read when scraped (for
Redis: as this process's workers last saw the stream); the histograms are per run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from mesh_images_asgi._observe.metrics import DURATION_BUCKETS

__all__ = ["JobMetrics"]


class JobMetrics:
    """Counters and histograms of jobs; ``depth`` is read at scrape time."""

    def __init__(self, registry: CollectorRegistry, depth: Callable[[], int]) -> None:
        self.jobs = Counter(
            "mesh_images_jobs",
            "Async jobs by status: submitted (queued) and ended (succeeded, failed, cancelled).",
            ("status",),
            registry=registry,
        )
        self.queued_seconds = Histogram(
            "mesh_images_job_queued_seconds",
            "Time from a job's submission to the start of its (last) run.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.running_seconds = Histogram(
            "mesh_images_job_running_seconds",
            "Time of one run of a job, whatever its end.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._depth = depth
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "mesh_images_job_queue_depth",
            "Async jobs waiting for a worker.",
            value=self._depth(),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())
