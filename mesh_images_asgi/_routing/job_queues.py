"""The job queue the settings ask for: Redis when ``MESH_IMAGES_REDIS_URL`` is set, else memory."""

from __future__ import annotations

from mesh_images_asgi._config import Settings
from mesh_images_asgi._domain.image_jobs import JobQueue
from mesh_images_asgi._routing.job_memory import MemoryJobQueue

__all__ = ["create_job_queue"]


def create_job_queue(settings: Settings) -> JobQueue:
    """A new queue for these settings (``docs/jobs.md``)."""
    if settings.redis_url is not None:
        from mesh_images_asgi._routing.job_redis import RedisJobQueue

        return RedisJobQueue(
            settings.redis_url.get_secret_value(),
            concurrency=settings.job_concurrency,
            size=settings.job_queue_size,
            lease=settings.job_lease,
            ttl=settings.job_ttl,
            prefix=settings.job_redis_prefix,
            max_connections=settings.redis_max_connections,
            pool_timeout=settings.redis_pool_timeout,
        )
    return MemoryJobQueue(
        concurrency=settings.job_concurrency, size=settings.job_queue_size, ttl=settings.job_ttl
    )
