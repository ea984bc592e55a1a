"""``mesh-images``: the command line (``serve``, ``keys``, ``catalog check``)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from mesh_images_asgi._access.keys import GatewayKey, hash_key, new_key
from mesh_images_asgi._config import ConfigError, Settings
from mesh_images_asgi._domain.catalog import load_catalog
from mesh_images_asgi._domain.catalog_check import check_catalog
from mesh_images_asgi._observe.redact import RedactingFilter

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh-images", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the standalone server (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument("--config", help="TOML config file (default: $MESH_IMAGES_CONFIG)")
    serve.add_argument(
        "--log-level",
        default=None,
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default: MESH_IMAGES_LOG_LEVEL or info)",
    )
    serve.add_argument(
        "--no-playground",
        action="store_true",
        help="do not serve the playground page at / (docs/playground.md)",
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --host with no gateway keys configured (anyone can spend)",
    )
    keys = commands.add_parser("keys", help="gateway keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="make a key; print it once, and its config entry")
    create.add_argument("--label", required=True, help="who the key is for (logs, metrics)")
    create.add_argument(
        "--models", action="append", help="model pattern it may use (repeatable; default all)"
    )
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--rpd", type=int, help="requests per UTC day")
    create.add_argument("--max-n", type=int, help="most images per request")
    create.add_argument(
        "--scope",
        action="append",
        choices=["admin"],
        dest="scopes",
        help="what else the key may do (admin: read /metrics under MESH_IMAGES_METRICS_AUTH)",
    )
    create.add_argument("--json", action="store_true", help="print one JSON object instead")
    keys.add_parser("hash", help="print the config hash of a key read from standard input")
    catalog = commands.add_parser("catalog", help="the model catalog").add_subparsers(
        dest="catalog_command", required=True
    )
    check = catalog.add_parser(
        "check", help="list models whose lifecycle needs attention; exit 1 on an error"
    )
    check.add_argument("--config", help="TOML config file (default: $MESH_IMAGES_CONFIG)")
    check.add_argument(
        "--today", type=datetime.date.fromisoformat, help="the date to check as of (YYYY-MM-DD)"
    )
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _toml_entry(entry: dict[str, Any]) -> str:
    lines = ["[[keys]]"]
    lines += [f"{name} = {json.dumps(value)}" for name, value in entry.items()]
    return "\n".join(lines)


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("mesh-images: give the key on standard input", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    key = new_key()
    options = {
        "models": args.models,
        "rpm": args.rpm,
        "rpd": args.rpd,
        "max_n": args.max_n,
        "scopes": args.scopes,
    }
    entry = {"hash": hash_key(key), "label": args.label}
    entry.update((name, value) for name, value in options.items() if value is not None)
    try:
        GatewayKey.model_validate(entry)
    except ValidationError as exc:
        print(f"mesh-images: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"key": key, "entry": entry}))
        return 0
    print(f"Key (shown once, it is stored nowhere): {key}\n")
    print(f"Config file entry:\n\n{_toml_entry(entry)}\n")
    print(f"Or as an item of MESH_IMAGES_API_KEYS (a JSON list):\n\n{json.dumps(entry)}")
    return 0


def _catalog_check(args: argparse.Namespace) -> int:
    try:
        catalog = load_catalog(Settings.load(args.config).models)
    except (ConfigError, ValueError) as exc:
        print(f"mesh-images: {exc}", file=sys.stderr)
        return 2
    today = args.today or datetime.datetime.now(datetime.UTC).date()
    findings = check_catalog(catalog, today)
    for finding in findings:
        print(finding)
    errors = sum(finding.level == "error" for finding in findings)
    print(
        f"catalog check ({today}): {len(catalog)} models, {errors} error(s), "
        f"{len(findings) - errors} warning(s)"
    )
    return 1 if errors else 0


def _tune_gc() -> None:
    """The standalone server owns its process, so it tunes the cyclic garbage collector (an app
    mounted in a host leaves that to the host: docs/operations.md).

    Under load a full collection walks every object alive since start-up (modules, pydantic
    schemas, the HTTP stack): about 30 ms each. With the default thresholds, collections took
    about an eighth of the CPU time at concurrency 32, and made the p99 latency. Those objects are
    frozen out of collections, and the youngest generation is collected every 10,000 net
    allocations instead of 700: requests make little cyclic garbage (bench/overhead.py measures
    the gateway; docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print(
            "mesh-images serve needs uvicorn: pip install 'mesh-images-asgi[server]'",
            file=sys.stderr,
        )
        return 2
    from mesh_images_asgi.main import create_app

    overrides = {"log_level": args.log_level} if args.log_level else {}
    try:
        settings = Settings.load(args.config, **overrides)
    except (ConfigError, ValueError) as exc:
        print(f"mesh-images: {exc}", file=sys.stderr)
        return 2
    if not settings.api_keys and not _is_loopback(args.host) and not args.insecure_no_auth:
        print(
            f"mesh-images: refusing to serve on {args.host} with no gateway keys configured: "
            "anyone who can reach it could spend your provider credits. Configure keys "
            "(mesh-images keys create; see docs/security.md), bind to 127.0.0.1, or pass "
            "--insecure-no-auth.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    from mesh_images_asgi._asgi.server import DrainingServer

    try:
        app = create_app(settings, playground=not args.no_playground)
    except ConfigError as exc:  # e.g. CORS asked for without Starlette installed
        print(f"mesh-images: {exc}", file=sys.stderr)
        return 2
    _tune_gc()
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        access_log=False,  # ours is one JSON line per request (docs/operations.md)
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout)),
    )
    server = DrainingServer(config, app)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C, re-raised once shut down (uvicorn.run)
        server.run()
    return 0 if server.started else 3  # uvicorn's STARTUP_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mesh-images`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "catalog":
        return _catalog_check(args)
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
