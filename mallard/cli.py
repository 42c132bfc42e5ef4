"""The ``mallard`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from mallard import __version__
from mallard.config import ConfigError, Settings, load_settings

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mallard", description="Self-hosted, privacy-first web analytics."
    )
    parser.add_argument("--version", action="version", version=f"mallard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the analytics server")
    serve.add_argument("--config", type=Path, metavar="PATH", help="a TOML settings file")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", help="bind port, 0 for any free port (default 8000)")
    serve.add_argument("--data-dir", help="where all state lives (default ./data)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {"host": args.host, "port": args.port, "data_dir": args.data_dir}
    return load_settings(config_file=args.config, flags=flags)


def _serve(settings: Settings) -> int:
    from mallard.logs import configure_logging
    from mallard.server import ShutdownTimeout, serve

    configure_logging(settings.log_format)
    try:
        trio.run(serve, settings)
    except Exception as error:
        cause = _single_cause(error)
        if isinstance(cause, ShutdownTimeout):
            print(f"mallard: {cause}", file=sys.stderr)
        elif isinstance(cause, OSError):  # the port is taken, the data dir is not writable…
            print(f"mallard: cannot start: {cause}", file=sys.stderr)
        else:
            raise
        return 1
    return 0


def _single_cause(error: BaseException) -> BaseException:
    """The one exception inside nested nursery exception groups, if there is just one."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as error:
        print(f"mallard: invalid setting {error}", file=sys.stderr)
        return EXIT_USAGE
    return _serve(settings)
