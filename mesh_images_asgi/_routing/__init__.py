"""Routing and resilience: the service, the router, breakers, bulkheads, BYOK."""
