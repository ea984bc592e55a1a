"""A minimal Django project whose ``asgi.py`` wraps Django with ``ImagesMiddleware``."""
