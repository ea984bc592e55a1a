"""Runnable hosts for mesh-images-asgi (see README.md in this folder)."""
