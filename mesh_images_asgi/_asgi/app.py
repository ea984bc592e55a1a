"""``ImagesApp``: the pure ASGI application serving the images routes.

This is the only module that knows both HTTP and the image service: it routes, reads and checks
the body, hands the validated request to the service, and writes the JSON (or, for
``"stream": true``, hands the job to the SSE writer). Every error leaves as the contract's
envelope with ``x-request-id``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs

import httpx

from mesh_images_asgi._access.keys import (
    ADMIN,
    GatewayKey,
    KeyRing,
    allowed_models,
    authorize,
    require_scope,
)
from mesh_images_asgi._access.ratelimit import Limiter, create_limiter, enforce
from mesh_images_asgi._asgi.body import ClientDisconnected, check_body_headers, read_body
from mesh_images_asgi._asgi.cors import with_cors
from mesh_images_asgi._asgi.dialects import model_dialect, stream_dialect
from mesh_images_asgi._asgi.disconnect import call_until_disconnect
from mesh_images_asgi._asgi.edit_request import read_edit
from mesh_images_asgi._asgi.error_response import send_error
from mesh_images_asgi._asgi.form import FormLimits
from mesh_images_asgi._asgi.handler import Handler, Reader
from mesh_images_asgi._asgi.hosted import request_base, serve_hosted
from mesh_images_asgi._asgi.inflight import InFlight
from mesh_images_asgi._asgi.job_routes import JobRoutes
from mesh_images_asgi._asgi.loop_guard import LoopGuard
from mesh_images_asgi._asgi.model_views import model_list, model_object
from mesh_images_asgi._asgi.openapi import OPENAPI_PATH, openapi_bytes
from mesh_images_asgi._asgi.playground import PAGE_PATHS, PlaygroundApp
from mesh_images_asgi._asgi.request_id import request_id_from_header
from mesh_images_asgi._asgi.responses import images_response
from mesh_images_asgi._asgi.responses import send_json as _send_json
from mesh_images_asgi._asgi.sse import stream_generation
from mesh_images_asgi._config import Settings
from mesh_images_asgi._core.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    get_header,
    route_path,
    send_bytes,
)
from mesh_images_asgi._core.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    ProviderNotAvailable,
    ServiceUnavailable,
)
from mesh_images_asgi._domain.catalog import Catalog, ModelEntry, load_catalog
from mesh_images_asgi._domain.cost import cost_headers
from mesh_images_asgi._domain.edit_inputs import EditInputs
from mesh_images_asgi._domain.image_jobs import JobQueue
from mesh_images_asgi._domain.jobs import Provider
from mesh_images_asgi._domain.schemas import ImageRequest, parse_request
from mesh_images_asgi._observe.job_metrics import JobMetrics
from mesh_images_asgi._observe.metrics import Metrics
from mesh_images_asgi._observe.observer import Observer
from mesh_images_asgi._observe.outcome import CLIENT_CLOSED, Outcome
from mesh_images_asgi._observe.redact import install_log_redaction, register_secret
from mesh_images_asgi._observe.tracing import Tracing
from mesh_images_asgi._routing.byok import read_client_keys
from mesh_images_asgi._routing.lifecycle import deprecation_headers
from mesh_images_asgi._routing.publisher import Publisher
from mesh_images_asgi._routing.router import Plan, Routed
from mesh_images_asgi._routing.service import ImageService
from mesh_images_asgi._store.base import REQUEST_BASE, ImageStore
from mesh_images_asgi._store.embedded import HOSTED_PREFIX, EmbeddedStore
from mesh_images_asgi._store.factory import create_store
from mesh_images_asgi._upstream.client import HttpxUpstream, UpstreamClient
from mesh_images_asgi._upstream.default import create_upstream_client
from mesh_images_asgi.providers.registry import build_providers

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = [
    "EDITS_PATH",
    "GENERATIONS_PATH",
    "HOSTED_ROUTE",
    "MODELS_PATH",
    "MODEL_PATH",
    "VARIATIONS_PATH",
    "ImagesApp",
    "Reader",
]

logger = logging.getLogger("mesh_images_asgi")

GENERATIONS_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
VARIATIONS_PATH = "/v1/images/variations"
MODELS_PATH = "/v1/models"
MODEL_PATH = "/v1/models/{model}"
"""One model; the id may hold ``/`` (``local/sketch``), so everything after the prefix is it."""
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
HOSTED_ROUTE = HOSTED_PREFIX + "{name}"
"""The embedded image store's images (the route's name in metrics and logs)."""

_JSON = b"application/json"


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """``send`` adding ``headers`` to the response start (JSON and stream answers alike)."""
    if not headers:
        return send

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return wrapped


def _without_body(send: Send) -> Send:
    """``send`` for a ``HEAD`` request: the GET answer's status and headers, no body."""

    async def head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return head


def _register_secrets(settings: Settings) -> None:
    install_log_redaction()
    secrets = (settings.openai_api_key, settings.vertex_api_key, settings.redis_url)
    for secret in (*secrets, settings.store_key, settings.job_webhook_secret):
        if secret is not None:
            register_secret(secret.get_secret_value())


def _shutting_down() -> ProviderNotAvailable:
    return ProviderNotAvailable(
        "This gateway is shutting down; retry the request.", retry_after_seconds=1.0
    )


class ImagesApp:
    """The images API as a pure ASGI app.

    Usage::

        app = ImagesApp()                      # settings from the environment
        app = ImagesApp(Settings(default_model="local/sketch"))

    **Parameters:**

    * **settings** - a ``Settings``; by default read from the environment and config file.
    * **providers** - replace the providers the settings would enable (tests).
    * **extra_providers** - providers of your own, by name, beside those the settings enable
      (``docs/providers.md``: "Your own provider"); their models come from the catalog.
    * **catalog** - replace the model catalog.
    * **http_client** - the ``httpx.AsyncClient`` for upstream calls; yours to close. By default
      an aiohttp session is created and closed with the app (``_upstream/aiohttp.py``).
    * **health** - also serve ``GET``/``HEAD`` ``/healthz`` (liveness) and ``/readyz``
      (readiness: 503 while draining; the standalone server does).
    * **openapi** - also serve ``GET /openapi.json`` (the standalone server does).
    * **metrics** - the ``Metrics`` to record into (``app.metrics``); by default a new one with its
      own registry. Hosts expose it with ``host.mount("/metrics", app.metrics.asgi_app())``.
    * **metrics_route** - also serve ``GET /metrics`` (the standalone server does).
    * **cors** - answer CORS for ``Settings.cors_origins`` (``MESH_IMAGES_CORS_ORIGINS``; the
      standalone server does; see ``_asgi/cors.py``).
    * **playground** - also serve the playground page at ``GET /`` (its files beside it; the
      standalone server does, ``mesh-images serve --no-playground`` turns it off; see
      ``_asgi/playground.py``).
    * **tracer_provider** - an OpenTelemetry tracer provider for this app's spans; by default the
      global one, when one is set (``MESH_IMAGES_OTEL``; see ``docs/operations.md``).
    * **store** - the image store for ``url`` answers; by default the one ``MESH_IMAGES_STORE``
      names (``docs/image-store.md``). An ``EmbeddedStore`` is served on
      ``GET /v1/images/hosted/{name}``.
    * **jobs** - the async jobs' queue; by default in the process, or in Redis when
      ``MESH_IMAGES_REDIS_URL`` is set (``docs/jobs.md``).

    With gateway keys configured (``Settings.api_keys``), every route but ``/healthz``,
    ``/openapi.json``, ``/metrics`` (unless ``MESH_IMAGES_METRICS_AUTH``: then a key with the
    ``admin`` scope), the hosted images (their signed URL is the credential) and the
    playground's files asks for one (see
    ``docs/security.md``). Metrics, the access log, tracing and cost: ``docs/operations.md``.

    Resources are created at lifespan startup (or ``async with app:`` in a host's lifespan, for a
    mounted app), or on first use when the host runs no lifespan; they are released by lifespan
    shutdown, ``await app.aclose()``, or else when the event loop that created them shuts down
    (see ``docs/hosting.md``).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        providers: Mapping[str, Provider] | None = None,
        extra_providers: Mapping[str, Provider] | None = None,
        catalog: Catalog | None = None,
        http_client: httpx.AsyncClient | None = None,
        health: bool = False,
        openapi: bool = False,
        metrics: Metrics | None = None,
        metrics_route: bool = False,
        cors: bool = False,
        playground: bool = False,
        tracer_provider: TracerProvider | None = None,
        store: ImageStore | None = None,
        jobs: JobQueue | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load()
        _register_secrets(self.settings)
        self._keys = KeyRing(self.settings.api_keys)
        self._limiter: Limiter | None = None
        self._providers = providers
        self._extra_providers = dict(extra_providers or {})
        self._catalog = catalog
        self._service: ImageService | None = None
        self._http_client = http_client
        self._owned_client: UpstreamClient | None = None
        self._loop_guard: LoopGuard | None = None
        self._inflight = InFlight()
        self._store = store
        self._edit_limits = FormLimits(
            max_body_bytes=self.settings.max_edit_body_bytes,
            max_file_bytes=self.settings.max_edit_file_bytes,
            max_files=self.settings.max_edit_files,
        )
        self._routes: dict[str, dict[str, Handler]] = {
            GENERATIONS_PATH: {"POST": self._generate},
            EDITS_PATH: {"POST": self._edit},
            VARIATIONS_PATH: {"POST": self._variations},
            MODELS_PATH: {"GET": self._models},
            MODEL_PATH: {"GET": self._model},
        }
        self.readers: dict[str, Reader] = {
            GENERATIONS_PATH: self._read_generation,
            EDITS_PATH: self._read_edit,
        }
        """The readers of the routes that also take async jobs (``/v1/async/images/...``)."""
        self._jobs = JobRoutes(self, jobs, self._routes)
        self._hosting = (
            isinstance(store, EmbeddedStore)
            if store is not None
            else self.settings.store == "embedded"
        )
        if self._hosting:
            self._routes[HOSTED_ROUTE] = {"GET": self._hosted, "HEAD": self._hosted}
        if health:
            self._routes[HEALTH_PATH] = {"GET": self._health, "HEAD": self._health}
            self._routes[READY_PATH] = {"GET": self._ready, "HEAD": self._ready}
        if openapi:
            self._routes[OPENAPI_PATH] = {"GET": self._openapi}
            self._openapi_body = openapi_bytes(
                auth=self._keys.enabled, health=health, hosted=self._hosting
            )
        if metrics_route:
            self._routes[METRICS_PATH] = {"GET": self._metrics}
        self._playground = PlaygroundApp() if playground else None
        if playground:
            for path in ("", *PAGE_PATHS):
                self._routes[path] = {"GET": self._page, "HEAD": self._page}
        self._entry: ASGIApp = self._http
        if cors and self.settings.cors_origins:
            self._entry = with_cors(self._http, self.settings.cors_origins)
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.bind(
            circuits=lambda: self._service.circuit_states() if self._service else (),
            bulkheads=lambda: self._service.bulkhead_loads() if self._service else (),
            in_flight=lambda: len(self._inflight),
        )
        self.job_metrics = JobMetrics(self.metrics.registry, self._jobs.depth)
        self._observer = Observer(
            self.metrics,
            Tracing(self.settings.otel, tracer_provider),
            self._routes,
            quiet=(HEALTH_PATH, READY_PATH, METRICS_PATH),
            log_prompts=self.settings.log_prompts,
        )

    @property
    def paths(self) -> frozenset[str]:
        """The route paths this app answers (``MODEL_PATH`` stands for every model's path)."""
        return frozenset(self._routes)

    def route(self, path: str) -> str | None:
        """The route (a key of ``paths``) serving ``path``, or None."""
        if path in self._routes:
            return path
        if path.startswith(MODELS_PATH + "/") and len(path) > len(MODELS_PATH) + 1:
            return MODEL_PATH
        if self._hosting and path.startswith(HOSTED_PREFIX):
            return HOSTED_ROUTE
        return self._jobs.route(path)

    @property
    def draining(self) -> bool:
        """True from the start of ``drain`` until the app is reopened: new generations get 503
        and ``/readyz`` says not ready."""
        return self._inflight.draining

    @property
    def service(self) -> ImageService:
        """The image service, created on first use."""
        if self._service is None:
            catalog = (
                self._catalog if self._catalog is not None else load_catalog(self.settings.models)
            )
            providers = self._providers
            if providers is None:
                client: UpstreamClient
                if self._http_client is not None:
                    client = HttpxUpstream(self._http_client, self.settings.max_upstream_bytes)
                else:
                    client = self._owned_client = create_upstream_client(self.settings)
                providers = build_providers(self.settings, client)
            providers = {**providers, **self._extra_providers}
            store = self._store if self._store is not None else create_store(self.settings)
            publisher = (
                Publisher(store, self.settings.url_ttl, self.settings.public_url)
                if store is not None
                else None
            )
            self._service = ImageService(self.settings, catalog, providers, publisher)
            self._service.log_enabled()
            self._loop_guard = LoopGuard.for_running_loop(self.aclose)
        return self._service

    @property
    def limiter(self) -> Limiter:
        """The rate limiter (Redis when ``MESH_IMAGES_REDIS_URL`` is set), created on first use."""
        if self._limiter is None:
            url = self.settings.redis_url
            self._limiter = create_limiter(
                url.get_secret_value() if url is not None else None,
                fail_open=self.settings.rate_limit_fail_open,
                max_connections=self.settings.redis_max_connections,
                pool_timeout=self.settings.redis_pool_timeout,
            )
        return self._limiter

    async def drain(self, patience: float | None = None) -> None:
        """Refuse new generations (503 ``provider_not_available``), let running ones finish for
        ``patience`` s (default ``MESH_IMAGES_DRAIN_TIMEOUT``), then cut the rest: see
        ``_asgi/inflight.py``. ``aclose`` (and so lifespan shutdown) drains first."""
        patience = self.settings.drain_timeout if patience is None else patience
        cut = await self._inflight.drain(patience)
        if cut:
            logger.warning("mesh-images: shutdown cut %d generation(s) after %g s", cut, patience)

    async def aclose(self) -> None:
        """Drain, then release the providers' resources; the app can be used again afterwards."""
        await self.drain()
        await self._jobs.aclose()
        self._inflight.reopen()
        service, self._service = self._service, None
        client, self._owned_client = self._owned_client, None
        guard, self._loop_guard = self._loop_guard, None
        if guard is not None:
            guard.disarm()
        if service is not None:
            await service.aclose()
        if client is not None:
            await client.aclose()
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            await limiter.aclose()

    async def __aenter__(self) -> Self:
        """Create the resources now; leaving the block closes them (for a host's lifespan)."""
        _ = self.service
        await self._jobs.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        await self._entry(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_from_header(get_header(scope, b"x-request-id"))
        path = route_path(scope)
        route = self.route(path)
        outcome = self._observer.start(scope, route or path, request_id)
        try:
            await self._dispatch(scope, route, receive, send, outcome)
        except ClientDisconnected:
            outcome.fail(CLIENT_CLOSED, "client_disconnected")
        except GatewayError as error:
            outcome.failed(error)
            outcome.bytes = await send_error(send, error, request_id)
        except Exception:
            outcome.fail(500, "internal_error")
            logger.exception("mesh-images: unhandled error in request %s", request_id)
            outcome.bytes = await send_error(send, InternalError("Internal error."), request_id)
        except BaseException:  # cancelled by the server or the host
            outcome.fail(CLIENT_CLOSED, "cancelled")
            raise
        finally:
            self._observer.finish(outcome)

    async def _dispatch(
        self, scope: Scope, route: str | None, receive: Receive, send: Send, outcome: Outcome
    ) -> None:
        methods = None if route is None else self._routes.get(route)
        if methods is None:
            raise NotFound(f"No route for {scope['path']!r}.")
        handler = methods.get(scope["method"])
        if handler is None:
            raise MethodNotAllowed(scope["method"], sorted(methods))
        if scope["method"] == "HEAD":
            send = _without_body(send)
        await handler(scope, receive, send, outcome)

    async def _generate(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        await self._serve(scope, receive, send, outcome, self._read_generation)

    async def _edit(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        """An edit: the same path as a generation, with the images of either request form."""
        await self._serve(scope, receive, send, outcome, self._read_edit)

    async def _variations(
        self, scope: Scope, receive: Receive, send: Send, outcome: Outcome
    ) -> None:
        """Served as an edit by the models that declare ``variations``; else a clear error."""
        await self._serve(scope, receive, send, outcome, self._read_variation)

    def check_open(self) -> None:
        """503 ``provider_not_available`` while draining: no new generation, no new job."""
        if self._inflight.draining:
            raise _shutting_down()

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, outcome: Outcome, read: Reader
    ) -> None:
        self.check_open()
        with self._inflight.track(send) as tracked:
            await self._serve_generation(scope, receive, tracked.send, outcome, read)
        if tracked.cut and not tracked.started:
            raise _shutting_down()

    async def admit(
        self, scope: Scope, send: Send, outcome: Outcome
    ) -> tuple[GatewayKey | None, Send]:
        """The caller's key and its rate limits (their headers added to ``send``): the cheap
        refusals, before a byte of the body is read."""
        key = self._keys.authenticate(scope)
        if key is not None:
            outcome.key = key.label
            send = _with_headers(send, await enforce(self.limiter, key))
        return key, send

    def caller(self, scope: Scope, outcome: Outcome) -> GatewayKey | None:
        """The caller's key (no rate limit taken: reading a job's state is free)."""
        key = self._keys.authenticate(scope)
        if key is not None:
            outcome.key = key.label
        return key

    def observe_job(self, scope: Scope, route: str, request_id: str) -> Outcome:
        """The record of one job's run (its own access log line, method ``JOB``)."""
        outcome = self._observer.start(scope, route, request_id)
        outcome.method = "JOB"
        return outcome

    def finish_job(self, outcome: Outcome) -> None:
        self._observer.finish(outcome)

    def set_request_base(self, base: str) -> None:
        """The public base URL the image store links to, for this task (unless configured)."""
        publisher = self.service.publisher
        if publisher is not None and publisher.needs_request_base:
            REQUEST_BASE.set(base)  # read by the publisher, in this task's context

    def key_named(self, label: str | None) -> GatewayKey | None:
        """The configured key labelled ``label`` (a job's owner); 401 if it is gone."""
        return self._keys.by_label(label)

    def plan(
        self,
        request: ImageRequest,
        key: GatewayKey | None,
        outcome: Outcome,
        inputs: EditInputs | None = None,
        scope: Scope | None = None,
    ) -> Plan:
        """Plan ``request`` (and an edit's ``inputs``) for ``key``, with the client's own
        provider keys from ``scope``: the model checks and the key's allow-list, as every image
        route does them."""
        plan = self.service.plan(
            request,
            keys=read_client_keys(scope) if scope else None,
            allow=allowed_models(key),
            inputs=inputs,
        )
        outcome.planned(plan.job)
        authorize(key, plan.job.entry, request.n)
        return plan

    def answer(
        self, routed: Routed, outcome: Outcome
    ) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
        """A served generation's response body and headers (a job's ``result`` is the body)."""
        body = images_response(routed.job, routed.result)
        headers = [
            *routed.routing.headers(),
            *cost_headers(outcome.served(routed.routing.fallback)),
        ]
        return body, headers

    async def _read_generation(
        self, scope: Scope, receive: Receive
    ) -> tuple[ImageRequest, EditInputs | None]:
        max_bytes = self.settings.max_body_bytes
        check_body_headers(scope, max_bytes)
        body = await read_body(receive, max_bytes, self.settings.body_timeout)
        return parse_request(body), None

    async def _read_edit(
        self, scope: Scope, receive: Receive
    ) -> tuple[ImageRequest, EditInputs | None]:
        return await read_edit(scope, receive, self._edit_limits, self.settings.body_timeout)

    async def _read_variation(
        self, scope: Scope, receive: Receive
    ) -> tuple[ImageRequest, EditInputs | None]:
        if not any(entry.variations for entry in self.service.enabled_models()):
            raise InvalidRequest(  # before a byte of the upload is read
                "Image variations were a DALL-E 2 feature, and DALL-E 2 is retired; no model "
                "here declares variations. Use POST /v1/images/edits with the image and a "
                "prompt describing the variation.",
                param="model",
            )
        request, inputs = await read_edit(
            scope,
            receive,
            self._edit_limits,
            self.settings.body_timeout,
            default_prompt="A variation of this image.",
        )
        entry = self.service.catalog.resolve(request.model or self.settings.default_model or "")
        if not entry.variations:
            raise InvalidRequest(
                f"{entry.id} does not make variations; use POST /v1/images/edits.", param="model"
            )
        return request, inputs

    async def _serve_generation(
        self, scope: Scope, receive: Receive, send: Send, outcome: Outcome, read: Reader
    ) -> None:
        request_id = outcome.request_id
        key, send = await self.admit(scope, send, outcome)
        request, inputs = await read(scope, receive)
        dialect = stream_dialect(scope) if request.stream else None
        if dialect == "openai" and "response_format" not in request.model_fields_set:
            # OpenAI's stream events carry b64_json: nothing to host unless url is asked for.
            request = request.model_copy(update={"response_format": "b64_json"})
        if request.response_format == "url":  # only hosted images need the request's base
            self.set_request_base(request_base(scope))
        plan = self.plan(request, key, outcome, inputs, scope)
        send = _with_headers(send, deprecation_headers(plan.job.entry))
        service = self.service
        if dialect is not None:
            await stream_generation(service, plan, receive, send, outcome, self.settings, dialect)
            return
        routed = await call_until_disconnect(receive, lambda: service.generate(plan))
        if routed is None:
            outcome.fail(CLIENT_CLOSED, "client_disconnected")
        else:
            body, headers = self.answer(routed, outcome)
            outcome.bytes = await _send_json(send, 200, body, request_id, headers)

    def _visible_models(self, scope: Scope, outcome: Outcome) -> list[ModelEntry]:
        """The models this caller may see: enabled providers, and those its key may use."""
        key = self._keys.authenticate(scope)
        entries = self.service.enabled_models()
        if key is not None:
            outcome.key = key.label
            entries = [entry for entry in entries if key.allows(entry)]
        return entries

    async def _models(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        entries = self._visible_models(scope, outcome)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("include_retired", ["false"])[-1].lower() not in {"true", "1"}:
            entries = [entry for entry in entries if entry.status != "retired"]
        types = {value.lower() for value in query.get("type", ())}
        if types and "image" not in types:  # every model here is an image model
            entries = []
        providers = {value.lower() for value in query.get("provider", ())}
        if providers:
            entries = [entry for entry in entries if entry.provider in providers]
        body = model_list(entries, self.service.created, model_dialect(scope))
        outcome.bytes = await _send_json(send, 200, body, outcome.request_id)

    async def _model(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        name = route_path(scope)[len(MODELS_PATH) + 1 :]
        entries = {entry.id: entry for entry in self._visible_models(scope, outcome)}
        try:
            entry = entries.get(self.service.catalog.resolve(name).id)
        except ModelNotFound:
            entry = None
        if entry is None:
            raise ModelNotFound(
                f"Model {name!r} is not served here. GET /v1/models lists the models served here."
            )
        body = model_object(entry, self.service.created, model_dialect(scope))
        outcome.bytes = await _send_json(send, 200, body, outcome.request_id)

    async def _health(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        if self._inflight.draining:  # load balancers stop sending while we drain
            raise _shutting_down()
        await _send_json(send, 200, {"status": "ok"}, outcome.request_id)

    async def _ready(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        """200 once the app's resources exist and while it is not draining; 503 otherwise.

        Servers answer no request before lifespan startup completes; with no lifespan, the
        first ``/readyz`` creates the resources (a first use) and says whether that worked."""
        if self._inflight.draining:
            raise _shutting_down()
        try:
            _ = self.service
        except Exception:
            logger.exception("mesh-images: the app could not start")
            raise ServiceUnavailable("This gateway could not start; see its log.") from None
        await _send_json(send, 200, {"status": "ready"}, outcome.request_id)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        if self.settings.metrics_auth:  # every tenant's series: for an admin only
            require_scope(self._keys.authenticate(scope), ADMIN)
        body, content_type = self.metrics.exposition(
            (get_header(scope, b"accept") or b"").decode("latin-1")
        )
        await send_bytes(
            send, 200, body, content_type, [(b"x-request-id", outcome.request_id.encode())]
        )

    async def _openapi(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        headers = [(b"x-request-id", outcome.request_id.encode())]
        await send_bytes(send, 200, self._openapi_body, _JSON, headers)
        outcome.bytes = len(self._openapi_body)

    async def _hosted(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        publisher = self.service.publisher
        store = publisher.store if publisher is not None else None
        if not isinstance(store, EmbeddedStore):
            raise NotFound(f"No route for {scope['path']!r}.")
        path = route_path(scope)
        outcome.bytes = await serve_hosted(store, path, scope, receive, send, outcome.request_id)

    async def _page(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        assert self._playground is not None  # the route exists only with it
        outcome.bytes = await self._playground.respond(scope, send, outcome.request_id)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._starting = True
                try:
                    _ = self.service
                    await self._jobs.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                finally:
                    await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
