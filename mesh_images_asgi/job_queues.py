"""The job queue the settings ask for: Redis when ``MESH_IMAGES_REDIS_URL`` is set, else memory."""

from __future__ import annotations

from .config import Settings
from .job_memory import MemoryJobQueue
from .jobs import JobQueue

__all__ = ["create_job_queue"]


def create_job_queue(settings: Settings) -> JobQueue:
    """A new queue for these settings (``docs/jobs.md``)."""
    if settings.redis_url is not None:
        from .job_redis import RedisJobQueue

        return RedisJobQueue(
            settings.redis_url.get_secret_value(),
            concurrency=settings.job_concurrency,
            size=settings.job_queue_size,
            lease=settings.job_lease,
            ttl=settings.job_ttl,
            prefix=settings.job_redis_prefix,
        )
    return MemoryJobQueue(
        concurrency=settings.job_concurrency, size=settings.job_queue_size, ttl=settings.job_ttl
    )
