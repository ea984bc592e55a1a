"""The access log: one JSON line per request on the logger ``mesh_images_asgi.access``.

    {"ts": "2026-05-09T07:35:25.512Z", "request_id": "req_01J...", "method": "POST",
     "route": "/v1/images/generations", "status": 200, "key": "team-a", "model": "local/sketch",
     "requested_model": "local/sketch", "provider": "local", "stream": false, "attempts": 1,
     "fallback": false, "upstream_ms": 812.4, "total_ms": 815.9, "images": 1, "bytes": 1304511,
     "cost_usd": 0.0}

The message is the JSON object itself (a ``%(message)s`` formatter prints a JSON line); the same
fields are on the record as ``record.mesh_images`` for structured handlers. The record is built
only when the logger is enabled for INFO (silence it with
``logging.getLogger("mesh_images_asgi.access").setLevel(logging.WARNING)``).

Warnings that concern operators (a deprecated model in use, once per model) are WARNING lines on
the same logger: ``{"ts", "level": "warning", "event": "model_deprecated", "model", ...}``.

Never image data, never a key (``key`` is the gateway key's label), never the prompt unless the
operator opted in (``MESH_IMAGES_LOG_PROMPTS``: its first 1,000 characters, redacted). A child
logger's records do not pass the ``mesh_images_asgi`` logger's filters, so this logger carries
its own ``RedactingFilter`` (installed by ``install``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from mesh_images_asgi._observe.redact import install_log_redaction, redact

if TYPE_CHECKING:
    from mesh_images_asgi._observe.outcome import Outcome

__all__ = ["LOGGER_NAME", "PROMPT_CHARS", "enabled", "fields", "install", "warn", "write"]

LOGGER_NAME = "mesh_images_asgi.access"
PROMPT_CHARS = 1000

logger = logging.getLogger(LOGGER_NAME)


def install() -> None:
    """Put the redaction filter on the access logger (idempotent)."""
    install_log_redaction(logger)


def enabled() -> bool:
    return logger.isEnabledFor(logging.INFO)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def fields(outcome: Outcome, total: float) -> dict[str, Any]:
    """The line's fields, in a stable order; optional ones only when they apply."""
    o = outcome
    line: dict[str, Any] = {
        "ts": _timestamp(time.time()),
        "request_id": o.request_id,
        "method": o.method,
        "route": o.route,
        "status": o.status,
    }
    if o.error is not None:
        line["error"] = o.error
    if o.provider_code is not None:
        line["provider_code"] = o.provider_code
    line["key"] = o.key
    if o.requested is not None:
        line["model"] = o.model
        line["requested_model"] = o.requested
        line["provider"] = o.provider
        line["stream"] = o.stream
        line["attempts"] = o.attempts
        line["fallback"] = o.fallback
        line["upstream_ms"] = _ms(o.upstream)
    line["total_ms"] = _ms(total)
    if o.requested is not None:
        line["images"] = o.images
    line["bytes"] = o.bytes
    if o.cost is not None:
        line["cost_usd"] = float(o.cost)
    if o.usage is not None:
        line["input_tokens"] = o.usage.prompt_tokens
        line["output_tokens"] = o.usage.completion_tokens
    if o.stream:
        line["pings"] = o.pings
    if o.prompt is not None:
        line["prompt"] = redact(o.prompt)[:PROMPT_CHARS]
    return line


def write(outcome: Outcome, total: float) -> None:
    """Log the request's line (call only when ``enabled()``)."""
    line = fields(outcome, total)
    logger.info(orjson.dumps(line).decode(), extra={"mesh_images": line})


def warn(event: str, **details: Any) -> None:
    """A WARNING line beside the request lines: ``{"ts", "level": "warning", "event", ...}``."""
    line: dict[str, Any] = {"ts": _timestamp(time.time()), "level": "warning", "event": event}
    line.update(details)
    logger.warning(orjson.dumps(line).decode(), extra={"mesh_images": line})
