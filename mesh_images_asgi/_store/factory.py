"""The image store ``MESH_IMAGES_STORE`` names (``_store/base.py`` draws the family)."""

from __future__ import annotations

from mesh_images_asgi._config import ConfigError, Settings
from mesh_images_asgi._store.base import ImageStore, default_store_dir

__all__ = ["create_store"]


def create_store(settings: Settings) -> ImageStore | None:
    """The store ``MESH_IMAGES_STORE`` names, or None for ``none``."""
    if settings.store == "none":
        return None
    if settings.store.startswith("s3://"):
        try:
            from mesh_images_asgi._store.s3 import (
                S3Store,  # the ``s3`` extra: imported only when configured
            )
        except ImportError:
            raise ConfigError(
                "MESH_IMAGES_STORE=s3://... needs the s3 extra: pip install 'mesh-images-asgi[s3]'"
            ) from None
        return S3Store.from_url(settings.store, tags=settings.store_tags)
    from mesh_images_asgi._store.embedded import EmbeddedStore

    key = settings.store_key.get_secret_value().encode() if settings.store_key else None
    directory = settings.store_dir or default_store_dir()
    return EmbeddedStore.open(directory, key=key, max_bytes=settings.store_max_bytes)
