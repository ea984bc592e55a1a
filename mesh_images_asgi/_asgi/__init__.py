"""The ASGI surface: the app, the middleware, the stream writer, the body reader."""
