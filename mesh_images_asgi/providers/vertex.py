"""Google Vertex AI: Imagen through ``:predict`` and Gemini image models through
``:generateContent``, authenticated by an OAuth2 token (service account or application default
credentials, see ``vertex_auth``) or by an API key ("express mode").

    https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}
        /publishers/google/models/{model}:{predict|generateContent}
    location "global": https://aiplatform.googleapis.com/...; "us"/"eu": aiplatform.{loc}.rep...
    API key: https://aiplatform.googleapis.com/v1/publishers/google/models/{model}:{method}

``MESH_IMAGES_VERTEX_BASE_URL`` replaces the scheme and host. A catalog entry's ``options`` name
the method (``api``) and may pin a ``location`` the model needs (preview Gemini models are served
from ``global`` only). What goes on the wire is in ``vertex_wire``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anyio
import httpx

from mesh_images_asgi._config import ConfigError, Settings
from mesh_images_asgi._core.errors import InvalidRequest, NotImplementedByGateway
from mesh_images_asgi._domain.catalog import ModelEntry
from mesh_images_asgi._domain.jobs import GenerationJob, PartialSink, ProviderResult
from mesh_images_asgi._upstream.client import UpstreamClient, as_upstream_client
from mesh_images_asgi.providers._http import Answer, parse_json_object, send_json
from mesh_images_asgi.providers.vertex_wire import (
    PROVIDER,
    VertexImages,
    generate_content_body,
    generate_content_images,
    google_error,
    predict_body,
    predict_images,
)

__all__ = [
    "DEFAULT_LOCATION",
    "DEFAULT_TOKEN_URI",
    "ApiKeyAuth",
    "VertexAuth",
    "VertexProvider",
    "client_credentials",
    "vertex_provider",
]

logger = logging.getLogger("mesh_images_asgi")

DEFAULT_LOCATION = "us-central1"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
_GLOBAL_ORIGIN = "https://aiplatform.googleapis.com"
_MULTI_REGIONS = frozenset({"us", "eu"})

_Body = Callable[[GenerationJob], dict[str, Any]]
_Images = Callable[[Mapping[str, Any]], VertexImages]
_METHODS: dict[str, tuple[_Body, _Images]] = {
    "predict": (predict_body, predict_images),
    "generateContent": (generate_content_body, generate_content_images),
}


class VertexAuth(Protocol):
    """Where the credentials of a Vertex request come from."""

    async def headers(self) -> dict[str, str]:
        """Headers that authenticate one request."""
        ...

    async def rejected(self, headers: Mapping[str, str]) -> bool:
        """Vertex answered 401 to ``headers``; True when new headers are worth one more try."""
        ...

    async def aclose(self) -> None: ...


class ApiKeyAuth:
    """Vertex AI express mode: the key in ``x-goog-api-key``."""

    def __init__(self, key: str) -> None:
        self._key = key

    async def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key}

    async def rejected(self, headers: Mapping[str, str]) -> bool:
        return False

    async def aclose(self) -> None:
        return None


def _origin(location: str) -> str:
    if location == "global":
        return _GLOBAL_ORIGIN
    if location in _MULTI_REGIONS:
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


class VertexProvider:
    """``vertex/*`` models."""

    name = "vertex"

    def __init__(
        self,
        client: UpstreamClient | httpx.AsyncClient,
        auth: VertexAuth,
        *,
        project: str | None,
        location: str = DEFAULT_LOCATION,
        base_url: str | None = None,
        token_uri: str = DEFAULT_TOKEN_URI,
        client_key_threads: int = 4,
    ) -> None:
        """``project`` None means API-key mode (no project or location in the URL).
        ``token_uri`` mints tokens for the service accounts clients bring (BYOK), in at most
        ``client_key_threads`` worker threads at once."""
        self._client = as_upstream_client(client)
        self._auth = auth
        self._project = project
        self._location = location
        self._base_url = base_url.rstrip("/") if base_url else None
        self._token_uri = token_uri
        self.client_keys = anyio.CapacityLimiter(client_key_threads)
        """The worker threads that load clients' service-account keys and mint their tokens."""

    def url(self, entry: ModelEntry) -> str:
        """The endpoint of ``entry``'s model and method."""
        return self._url(entry, self._project, self._location)

    def _url(self, entry: ModelEntry, project: str | None, location: str) -> str:
        method = entry.options.get("api")
        model = f"publishers/google/models/{entry.upstream}:{method}"
        if project is None:
            return f"{self._base_url or _GLOBAL_ORIGIN}/v1/{model}"
        location = entry.options.get("location") or location
        origin = self._base_url or _origin(location)
        return f"{origin}/v1/projects/{project}/locations/{location}/{model}"

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        method = _METHODS.get(job.entry.options.get("api", ""))
        if method is None:
            raise NotImplementedByGateway(
                f"Model {job.entry.id!r} names no Vertex AI method (its catalog entry's "
                'options.api must be "predict" or "generateContent").'
            )
        build_body, read_images = method
        if job.credentials is None:
            response = await self._post(self.url(job.entry), build_body(job))
        else:
            response = await self._post_as_client(job.entry, build_body(job), job.credentials)
        if not response.is_success:
            raise google_error(response)
        found = read_images(parse_json_object(PROVIDER, response.content))
        return ProviderResult(
            images=found.images,
            created=int(time.time()),
            output_format=found.output_format,
            usage=found.usage,
        )

    async def _post(self, url: str, body: dict[str, Any]) -> Answer:
        headers = await self._auth.headers()
        response = await send_json(self._client, PROVIDER, url, body, headers)
        # A token can be revoked or expire early: refresh it and try once more, as google-auth does.
        if response.status_code == 401 and await self._auth.rejected(headers):
            headers = await self._auth.headers()
            response = await send_json(self._client, PROVIDER, url, body, headers)
        return response

    async def _post_as_client(self, entry: ModelEntry, body: dict[str, Any], raw: str) -> Answer:
        """POST with the credentials the client brought: its API key, or a token minted now for
        its service account, in its project (and ``region``, else ours)."""
        credentials = client_credentials(raw)
        if isinstance(credentials, str):
            url, headers = self._url(entry, None, self._location), {"x-goog-api-key": credentials}
        else:
            try:
                from mesh_images_asgi.providers.vertex_auth import service_account_token
            except ImportError:
                raise NotImplementedByGateway(
                    "Service-account credentials need google-auth on this gateway: "
                    "pip install 'mesh-images-asgi[vertex]'."
                ) from None
            token = await service_account_token(
                credentials, self._token_uri, limiter=self.client_keys
            )
            location = credentials.get("region") or self._location
            url = self._url(entry, credentials["project_id"], location)
            headers = {"authorization": f"Bearer {token}"}
        return await send_json(self._client, PROVIDER, url, body, headers)

    async def aclose(self) -> None:
        await self._auth.aclose()


_PROJECT = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")  # fullmatch: no "$" letting "\n" by
_REGION = re.compile(r"[a-z]+[a-z0-9-]{0,39}")
_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "project_id")


def _plain_region(region: Any) -> bool:
    return region is None or (isinstance(region, str) and _REGION.fullmatch(region) is not None)


def client_credentials(raw: str) -> str | dict[str, Any]:
    """A client's ``X-Vertex-Credentials``: a service-account key (its JSON, raw or base64; an
    optional ``"region"``) or an API key. A malformed key is 400 ``invalid_request``; the project
    and region, which go into the URL, must be plain names."""
    text = raw
    if not text.startswith("{"):
        try:
            decoded = base64.b64decode(text, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return raw
        if not decoded.lstrip().startswith("{"):
            return raw
        text = decoded
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    problem = "it is not a JSON object"
    if isinstance(info, dict):
        problem = ""
        if info.get("type") != "service_account":
            problem = 'its "type" is not "service_account"'
        elif not all(isinstance(info.get(name), str) for name in _SERVICE_ACCOUNT_FIELDS):
            problem = "it lacks " + " or ".join(_SERVICE_ACCOUNT_FIELDS)
        elif not _PROJECT.fullmatch(info["project_id"]):
            problem = "its project_id is not a project id"
        elif not _plain_region(info.get("region")):
            problem = "its region is not a region name"
    if problem:
        raise InvalidRequest(
            f"X-Vertex-Credentials is not a usable service-account key: {problem}.",
            param="X-Vertex-Credentials",
        )
    assert isinstance(info, dict)
    return info


def vertex_provider(
    settings: Settings, client: UpstreamClient | httpx.AsyncClient
) -> VertexProvider | None:
    """The provider the settings configure, or None when they configure no Vertex credentials.

    An API key wins; otherwise ``GOOGLE_APPLICATION_CREDENTIALS`` or, with a project set,
    application default credentials. A credentials file that cannot be used is a ``ConfigError``.
    """
    location = settings.google_cloud_location or DEFAULT_LOCATION
    base_url = settings.vertex_base_url
    if settings.vertex_api_key is not None:
        logger.info("mesh-images: Vertex AI with an API key (express mode)")
        auth = ApiKeyAuth(settings.vertex_api_key.get_secret_value())
        return VertexProvider(
            client,
            auth,
            project=None,
            location=location,
            base_url=base_url,
            token_uri=settings.vertex_token_uri,
            client_key_threads=settings.client_key_threads,
        )
    if settings.google_application_credentials is None and settings.google_cloud_project is None:
        return None
    try:
        from mesh_images_asgi.providers.vertex_auth import TokenAuth, load_credentials
    except ImportError:
        raise ConfigError(
            "Vertex AI credentials are configured but google-auth is not installed: "
            "pip install 'mesh-images-asgi[vertex]'."
        ) from None
    loaded = load_credentials(settings.google_application_credentials)
    if loaded is None:
        logger.warning(
            "mesh-images: GOOGLE_CLOUD_PROJECT is set but no Google credentials were found; "
            "Vertex AI is not enabled"
        )
        return None
    credentials, credentials_project = loaded
    project = settings.google_cloud_project or credentials_project
    if project is None:
        logger.warning(
            "mesh-images: the Google credentials name no project and GOOGLE_CLOUD_PROJECT is not "
            "set; Vertex AI is not enabled"
        )
        return None
    logger.info("mesh-images: Vertex AI for project %s in %s", project, location)
    return VertexProvider(
        client,
        TokenAuth(credentials),
        project=project,
        location=location,
        base_url=base_url,
        token_uri=settings.vertex_token_uri,
        client_key_threads=settings.client_key_threads,
    )
