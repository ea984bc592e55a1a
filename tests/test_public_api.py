"""The public surface: exactly these names, each documented; everything else is private."""

from __future__ import annotations

import pkgutil

import mesh_images_asgi

PUBLIC = [
    "ContentPolicyViolation",
    "GatewayError",
    "GeneratedImage",
    "GenerationJob",
    "ImagesApp",
    "ImagesMiddleware",
    "InvalidRequest",
    "Metrics",
    "PartialImage",
    "PartialSink",
    "PlaygroundApp",
    "Provider",
    "ProviderResult",
    "Settings",
    "UpstreamError",
    "Usage",
]


def test_public_names_are_exactly_the_contract() -> None:
    assert mesh_images_asgi.__all__ == PUBLIC
    for name in mesh_images_asgi.__all__:
        public = getattr(mesh_images_asgi, name)
        if isinstance(public, type):  # PartialSink is a type alias, documented in its module
            assert public.__doc__, name


def test_every_module_but_the_entry_points_and_providers_is_private() -> None:
    public = {
        module.name
        for module in pkgutil.iter_modules(mesh_images_asgi.__path__)
        if not module.name.startswith("_")
    }
    assert public == {"cli", "main", "providers"}


def test_standalone_module_app() -> None:
    from mesh_images_asgi.main import app, create_app

    assert "/healthz" in app.paths
    assert "/healthz" in create_app().paths
