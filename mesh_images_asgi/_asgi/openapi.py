"""The OpenAPI 3.1 document of our routes, generated from the pydantic models.

The request schema is ``ImageRequest`` itself; the response, model list and error envelope are
described by the models below, which exist for this document (the handlers build plain dicts).
Served as ``GET /openapi.json`` by ``ImagesApp(openapi=True)`` (the standalone server does).
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from mesh_images_asgi._domain.schemas import ImageRequest

__all__ = [
    "OPENAPI_PATH",
    "EditRequest",
    "ErrorEnvelope",
    "ImagesResponse",
    "ModelList",
    "openapi_bytes",
    "openapi_document",
]

OPENAPI_PATH = "/openapi.json"


class EditRequest(ImageRequest):
    """``POST /v1/images/edits`` as JSON (the Mesh form; OpenAI's ``images`` list is taken too):
    every generation field, and the images as data URLs or bare base64 (remote URLs refused)."""

    image: str | list[str]
    mask: str | None = None
    reference_images: list[str] | None = None
    images: list[dict[str, str]] | None = None
    operation: Literal[
        "edit", "inpaint", "outpaint", "mix", "reframe", "upscale", "remove_background"
    ] = "edit"
    input_fidelity: Literal["high", "low"] | None = None
    upscale_factor: float | str | None = None
    expand_factor: float | str | None = None


_EDIT_FORM: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's form: image (or image[], up to 16 files), mask, and the fields of "
    "a generation as text, plus input_fidelity and operation.",
    "required": ["image", "prompt"],
    "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "mask": {"type": "string", "format": "binary"},
        "prompt": {"type": "string"},
        "model": {"type": "string"},
        "n": {"type": "integer"},
        "size": {"type": "string"},
        "input_fidelity": {"type": "string", "enum": ["high", "low"]},
        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        "stream": {"type": "boolean"},
    },
}


class ImageData(BaseModel):
    """One image: ``url`` (possibly a ``data:`` URL) or ``b64_json``."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class Usage(BaseModel):
    """Token usage, when the upstream reports it (details objects are kept as sent)."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ImagesResponse(BaseModel):
    """The non-streaming answer; optional fields appear only when the upstream returned them."""

    created: int
    data: list[ImageData]
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    usage: Usage | None = None


class ModelList(BaseModel):
    """``GET /v1/models``: OpenAI's list shape; entries carry ``capabilities``, ``lifecycle`` and
    ``pricing``."""

    object: Literal["list"]
    data: list[dict[str, Any]]


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorObject(BaseModel):
    code: str = Field(description="Stable, safe to branch on.")
    type: str = Field(description="OpenAI's error type (invalid_request_error, server_error...).")
    message: str
    param: str | None = None
    details: list[ErrorDetail] | None = None
    provider_code: str | None = None
    provider_error: dict[str, Any] | None = None
    retry_after_seconds: int | None = None


class ErrorEnvelope(BaseModel):
    """Every error body."""

    error: ErrorObject
    request_id: str


class Health(BaseModel):
    status: Literal["ok", "ready"]


_ERRORS = {
    "400": "invalid_request, invalid_json or content_policy_violation",
    "401": "unauthorized (missing or wrong gateway key) or byok_fallback_disabled",
    "403": "forbidden: the key may not use that model, or a hosted image link is tampered",
    "404": "model_not_found or not_found",
    "405": "method_not_allowed",
    "408": "request_timeout: the body did not arrive in time",
    "410": "model_retired: its provider shut the model down, the message names the replacement; "
    "url_expired: a hosted image's link is past its expiry",
    "413": "request_too_large",
    "415": "unsupported_media_type",
    "422": "validation_error, with details",
    "429": "rate_limit_exceeded, upstream_rate_limit_error or byok_fallback_disabled (Retry-After)",
    "500": "internal_error",
    "501": "not_implemented: the provider is not configured",
    "502": "upstream_error, upstream_auth_error or image_store_error",
    "503": "service_unavailable (rate limiting down, failing closed) or provider_not_available",
    "504": "gateway_timeout",
}
_SSE_EVENT = {  # one event (before OpenAPI 3.2's itemSchema, ``schema`` describes each event)
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "description": 'An image.chunk object as JSON, {"error": ...} as JSON, or [DONE].',
        },
    },
}
_REQUEST_ID = {
    "x-request-id": {
        "description": "The client's X-Request-Id when well formed, else a new req_<ULID>.",
        "schema": {"type": "string"},
    }
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _REQUEST_ID,
        "content": {"application/json": {"schema": _ref(name)}},
    }


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: _json("ErrorEnvelope", _ERRORS[status]) for status in statuses}


def _version() -> str:
    try:
        return metadata.version("mesh-images-asgi")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


_HOSTED = {
    "operationId": "getHostedImage",
    "summary": "An image of a url answer (signed link; no key needed until it expires)",
    "parameters": [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
        {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"}},
    ],
    "responses": {
        "200": {"description": "The image (Range requests: 206)", "content": {"image/*": {}}},
        **_errors("403", "404", "410"),
    },
}


def openapi_document(
    *, auth: bool = False, health: bool = False, hosted: bool = False
) -> dict[str, Any]:
    """The document: ``auth`` when gateway keys are configured, ``health`` with ``/healthz``,
    ``hosted`` with the embedded image store's route."""
    _, definitions = models_json_schema(
        [
            (ImageRequest, "validation"),
            (EditRequest, "validation"),
            (ImagesResponse, "serialization"),
            (ModelList, "serialization"),
            (ErrorEnvelope, "serialization"),
            (Health, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    secured: dict[str, Any] = {"security": [{"bearer": []}]} if auth else {}
    denied = ("401",) if auth else ()
    generate = {
        "operationId": "createImage",
        "summary": "Generate images (JSON, or server-sent events with stream=true)",
        **secured,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("ImageRequest")}},
        },
        "responses": {
            "200": {
                "description": "The images; with stream=true, image.chunk events then [DONE]",
                "headers": _REQUEST_ID,
                "content": {
                    "application/json": {"schema": _ref("ImagesResponse")},
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            },
            **_errors("400", "401", "403", "404", "408", "410", "413", "415", "422", "429"),
            **_errors("500", "501", "502", "503", "504"),
        },
    }
    edit = {
        **generate,
        "operationId": "createImageEdit",
        "summary": "Edit images: multipart (OpenAI) or JSON (Mesh); the answer of a generation",
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": _EDIT_FORM},
                "application/json": {"schema": _ref("EditRequest")},
            },
        },
    }
    models = {
        "operationId": "listModels",
        "summary": "The image models this gateway serves",
        **secured,
        "parameters": [
            {"name": "type", "in": "query", "required": False, "schema": {"type": "string"}},
            {
                "name": "include_retired",
                "in": "query",
                "required": False,
                "schema": {"type": "boolean", "default": False},
                "description": "Also list the models their provider shut down.",
            },
        ],
        "responses": {
            "200": _json("ModelList", "The models"),
            **_errors(*denied, "500"),
        },
    }
    model = {
        "operationId": "retrieveModel",
        "summary": "One model (the id may hold '/'; aliases resolve)",
        **secured,
        "parameters": [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {
                "description": "The model, as in the list",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **_errors(*denied, "404", "500"),
        },
    }
    paths: dict[str, Any] = {
        "/v1/images/generations": {"post": generate},
        "/v1/images/edits": {"post": edit},
        "/v1/models": {"get": models},
        "/v1/models/{model}": {"get": model},
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    if health:
        for path, name, summary in (
            ("/healthz", "health", "Liveness"),
            ("/readyz", "ready", "Readiness"),
        ):
            probe = {
                "summary": summary,
                "responses": {"200": _json("Health", summary), **_errors("503")},
            }
            paths[path] = {
                "get": {"operationId": name, **probe},
                "head": {"operationId": name + "Head", **probe},
            }
    if hosted:
        paths["/v1/images/hosted/{name}"] = {"get": _HOSTED}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "mesh-images-asgi",
            "version": _version(),
            "description": "OpenAI-compatible image generation. Errors: docs/index.md.",
        },
        "paths": paths,
        "components": {"schemas": definitions["$defs"]},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def openapi_bytes(*, auth: bool = False, health: bool = False, hosted: bool = False) -> bytes:
    """``openapi_document`` as the JSON body served."""
    document = openapi_document(auth=auth, health=health, hosted=hosted)
    return json.dumps(document, separators=(",", ":")).encode()
