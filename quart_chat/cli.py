"""The `quart-chat` command."""

from __future__ import annotations

import argparse
import os
import sys

from .app import configure_logging
from .config import SettingsError, load_settings

DEFAULT_BIND = "127.0.0.1:9990"


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quart-chat", description="Self-hosted team chat.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--bind", default=DEFAULT_BIND, help=f"HOST:PORT (default {DEFAULT_BIND})")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="worker processes (default: CPU count)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    from .launcher import CannotServe, serve

    try:
        return serve(load_settings(), args.bind, args.workers)
    except SettingsError as error:
        print(f"quart-chat: error: {error}", file=sys.stderr)
        return 2
    except (CannotServe, OSError) as error:
        # OSError: anything else the system refused, which names its file.
        print(f"quart-chat: error: {error}", file=sys.stderr)
        return 1
