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

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx

from ..catalog import ModelEntry
from ..config import ConfigError, Settings
from ..errors import NotImplementedByGateway
from ._http import parse_json_object, send_json
from .base import GenerationJob, PartialSink, ProviderResult
from .vertex_wire import (
    PROVIDER,
    VertexImages,
    generate_content_body,
    generate_content_images,
    google_error,
    predict_body,
    predict_images,
)

__all__ = ["DEFAULT_LOCATION", "ApiKeyAuth", "VertexAuth", "VertexProvider", "vertex_provider"]

logger = logging.getLogger("mesh_images_asgi")

DEFAULT_LOCATION = "us-central1"
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
        client: httpx.AsyncClient,
        auth: VertexAuth,
        *,
        project: str | None,
        location: str = DEFAULT_LOCATION,
        base_url: str | None = None,
    ) -> None:
        """``project`` None means API-key mode (no project or location in the URL)."""
        self._client = client
        self._auth = auth
        self._project = project
        self._location = location
        self._base_url = base_url.rstrip("/") if base_url else None

    def url(self, entry: ModelEntry) -> str:
        """The endpoint of ``entry``'s model and method."""
        method = entry.options.get("api")
        model = f"publishers/google/models/{entry.upstream}:{method}"
        if self._project is None:
            return f"{self._base_url or _GLOBAL_ORIGIN}/v1/{model}"
        location = entry.options.get("location") or self._location
        origin = self._base_url or _origin(location)
        return f"{origin}/v1/projects/{self._project}/locations/{location}/{model}"

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
        response = await self._post(self.url(job.entry), build_body(job))
        if not response.is_success:
            raise google_error(response)
        found = read_images(parse_json_object(PROVIDER, response.content))
        return ProviderResult(
            images=found.images,
            created=int(time.time()),
            output_format=found.output_format,
            usage=found.usage,
        )

    async def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        headers = await self._auth.headers()
        response = await send_json(self._client, PROVIDER, url, body, headers)
        # A token can be revoked or expire early: refresh it and try once more, as google-auth does.
        if response.status_code == 401 and await self._auth.rejected(headers):
            headers = await self._auth.headers()
            response = await send_json(self._client, PROVIDER, url, body, headers)
        return response

    async def aclose(self) -> None:
        await self._auth.aclose()


def vertex_provider(settings: Settings, client: httpx.AsyncClient) -> VertexProvider | None:
    """The provider the settings configure, or None when they configure no Vertex credentials.

    An API key wins; otherwise ``GOOGLE_APPLICATION_CREDENTIALS`` or, with a project set,
    application default credentials. A credentials file that cannot be used is a ``ConfigError``.
    """
    location = settings.google_cloud_location or DEFAULT_LOCATION
    base_url = settings.vertex_base_url
    if settings.vertex_api_key is not None:
        logger.info("mesh-images: Vertex AI with an API key (express mode)")
        auth = ApiKeyAuth(settings.vertex_api_key.get_secret_value())
        return VertexProvider(client, auth, project=None, location=location, base_url=base_url)
    if settings.google_application_credentials is None and settings.google_cloud_project is None:
        return None
    try:
        from .vertex_auth import TokenAuth, load_credentials
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
        client, TokenAuth(credentials), project=project, location=location, base_url=base_url
    )
