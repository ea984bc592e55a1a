"""OpenTelemetry spans, optional: ``pip install 'mesh-images-asgi[otel]'``.

One span per generation request and one per upstream attempt, its child::

    POST /v1/images/generations        SERVER (INTERNAL under a host's own server span)
      image_generation gpt-image-2     CLIENT, one per attempt (retries and fallbacks too)

with the GenAI semantic conventions' attributes (``gen_ai.operation.name = "image_generation"``,
``gen_ai.request.model``, ``gen_ai.provider.name`` and the older ``gen_ai.system``,
``gen_ai.usage.input_tokens``/``output_tokens``) and a few of our own (``mesh_images.*``: the
catalog model, images, cost, attempts, fallback). Never the prompt, never image data.

The parent is the host's current span when it has one (an instrumented host), else the context
in the request's headers (``traceparent``, through the global propagator). Each upstream request
carries the attempt span's W3C ``traceparent``/``tracestate`` (``upstream_headers``, used by the
one POST helper in ``providers/_http.py``); baggage is never sent to a third party.

When on: ``Tracing(True)`` (``MESH_IMAGES_OTEL=1``) or an explicit tracer provider always; by
default (``None``) when opentelemetry is installed and a real tracer provider is set when the app
serves its first request (``opentelemetry-instrument``, or the host's own set-up); ``False``
never. Off, nothing is imported and a request pays one attribute test.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mesh_images_asgi._core.asgi import Scope

if TYPE_CHECKING:
    from contextvars import Token
    from typing import TypeAlias

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from mesh_images_asgi._domain.jobs import GenerationJob, ProviderResult
    from mesh_images_asgi._domain.usage import Usage
    from mesh_images_asgi._observe.outcome import Outcome

    Active: TypeAlias = tuple[Span, Token[Context]]
    """A span made current, and the token that detaches it."""

__all__ = ["OPERATION", "Tracing", "available", "upstream_headers"]

OPERATION = "image_generation"
_PROVIDER_NAMES = {"openai": "openai", "vertex": "gcp.vertex_ai"}
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_w3c: Any = None  # the W3C trace-context propagator, once an app turned tracing on


def available() -> bool:
    """Whether the OpenTelemetry API is installed.

    ``find_spec`` of a submodule imports its parent, and raises when the parent is missing (a base
    install, without the ``otel`` extra): ask for the parent first."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ImportError:  # ModuleNotFoundError: no ``opentelemetry`` package at all
        return False


def upstream_headers() -> Mapping[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, for an upstream request."""
    if _w3c is None:
        return _NO_HEADERS
    carrier: dict[str, str] = {}
    _w3c.inject(carrier)
    return carrier


def _provider_name(provider: str) -> str:
    return _PROVIDER_NAMES.get(provider, provider)


def _usage_attributes(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {}
    return {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
    }


class Tracing:
    """The spans of one app; inert until ``resolve`` finds a tracer.

    **Parameters:**

    * **enabled** - True: always (the global tracer provider, whenever it is set); False: never;
      None: when a real global tracer provider is set at the first request.
    * **tracer_provider** - use this provider instead of the global one (turns tracing on).
    """

    def __init__(
        self, enabled: bool | None = None, tracer_provider: TracerProvider | None = None
    ) -> None:
        wanted = enabled is True or (tracer_provider is not None and enabled is not False)
        if wanted and not available():
            raise RuntimeError(
                "MESH_IMAGES_OTEL needs OpenTelemetry: pip install 'mesh-images-asgi[otel]'"
            )
        self._enabled = enabled
        self._provider = tracer_provider
        self.pending = enabled is not False
        """True until the first request decides (``resolve``)."""
        self.tracer: Tracer | None = None

    def resolve(self) -> None:
        """Decide, once, whether spans are made."""
        global _w3c
        self.pending = False
        if self._enabled is False or not available():
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from mesh_images_asgi._version import __version__

        provider = self._provider
        if provider is None:
            provider = trace.get_tracer_provider()
            unset = isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
            if unset and self._enabled is None:
                return
        self.tracer = provider.get_tracer("mesh_images_asgi", __version__)
        if _w3c is None:
            _w3c = TraceContextTextMapPropagator()

    def start_request(self, scope: Scope, route: str | None) -> Active:
        """The request's span, made current; returns it and the token to detach it with.

        ``route`` None: a path we do not serve (the span is named by the method alone)."""
        from opentelemetry import context, propagate, trace

        assert self.tracer is not None
        parent: Context | None = None
        kind = trace.SpanKind.INTERNAL
        if not trace.get_current_span().get_span_context().is_valid:
            headers = {
                key.decode("latin-1"): value.decode("latin-1")
                for key, value in scope.get("headers", ())
            }
            parent, kind = propagate.extract(headers), trace.SpanKind.SERVER
        method = scope.get("method", "GET")
        attributes = {"http.request.method": method}
        if route is not None:
            attributes["http.route"] = route
        span = self.tracer.start_span(
            method if route is None else f"{method} {route}",
            context=parent,
            kind=kind,
            attributes=attributes,
        )
        return span, context.attach(trace.set_span_in_context(span))

    def end_request(self, active: Active, outcome: Outcome) -> None:
        """Detach and end the request's span with what the request came to."""
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span, token = active
        context.detach(token)
        o = outcome
        attributes: dict[str, Any] = {"http.response.status_code": o.status}
        if o.requested is not None:
            attributes.update(
                {
                    "gen_ai.operation.name": OPERATION,
                    "gen_ai.request.model": o.requested,
                    "gen_ai.request.choice.count": o.n,
                    "mesh_images.stream": o.stream,
                    "mesh_images.routing.attempts": o.attempts,
                    "mesh_images.routing.fallback": o.fallback,
                }
            )
        if o.provider:
            name = _provider_name(o.provider)
            attributes["gen_ai.provider.name"] = attributes["gen_ai.system"] = name
        if o.images:
            attributes["gen_ai.response.model"] = o.model
            attributes["mesh_images.images"] = o.images
            attributes.update(_usage_attributes(o.usage))
        if o.cost is not None:
            attributes["mesh_images.cost_usd"] = float(o.cost)
        if o.key is not None:
            attributes["mesh_images.key_label"] = o.key
        if o.error is not None:
            attributes["error.type"] = o.error
        span.set_attributes(attributes)
        if o.status >= 500:
            span.set_status(Status(StatusCode.ERROR, o.error))
        span.end()

    def start_attempt(self, job: GenerationJob, number: int) -> Active:
        """An upstream attempt's span, made current (so ``traceparent`` names it)."""
        from opentelemetry import context, trace

        assert self.tracer is not None
        entry = job.entry
        provider = _provider_name(entry.provider)
        span = self.tracer.start_span(
            f"{OPERATION} {entry.upstream}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": OPERATION,
                "gen_ai.request.model": entry.upstream,
                "gen_ai.provider.name": provider,
                "gen_ai.system": provider,
                "gen_ai.request.choice.count": job.request.n,
                "mesh_images.model": entry.id,
                "mesh_images.attempt": number,
                "mesh_images.byok": job.credentials is not None,
            },
        )
        return span, context.attach(trace.set_span_in_context(span))

    def end_attempt(
        self,
        active: Active,
        result: ProviderResult | None,
        error: str | None,
    ) -> None:
        """Detach and end an attempt's span: its usage, or the error that ended it."""
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span, token = active
        context.detach(token)
        if result is not None:
            span.set_attributes(
                {"mesh_images.images": len(result.images), **_usage_attributes(result.usage)}
            )
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
