"""Primitives every layer may use: ASGI types, cancel scopes, the error hierarchy, bulkheads,
the client-presence hook. They import nothing of the package."""
