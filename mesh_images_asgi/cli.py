"""``mesh-images``: the command line (``mesh-images serve``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .config import ConfigError, Settings

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
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print(
            "mesh-images serve needs uvicorn: pip install 'mesh-images-asgi[server]'",
            file=sys.stderr,
        )
        return 2
    from .main import create_app

    overrides = {"log_level": args.log_level} if args.log_level else {}
    try:
        settings = Settings.load(args.config, **overrides)
    except (ConfigError, ValueError) as exc:
        print(f"mesh-images: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(message)s")
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        lifespan="on",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mesh-images`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
