from __future__ import annotations

import mesh_images_asgi


def test_public_names_are_exactly_the_contract() -> None:
    assert mesh_images_asgi.__all__ == [
        "ImagesApp",
        "ImagesMiddleware",
        "PlaygroundApp",
        "Settings",
    ]
    for name in mesh_images_asgi.__all__:
        assert getattr(mesh_images_asgi, name).__doc__


def test_standalone_module_app() -> None:
    from mesh_images_asgi.main import app, create_app

    assert "/healthz" in app.paths
    assert "/healthz" in create_app().paths
