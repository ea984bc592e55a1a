"""Observability: the outcome record, the observer, metrics, spans, the access log."""
