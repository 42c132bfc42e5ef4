"""The ``mallard`` command."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import errno
import os
import socket
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from mallard import __version__
from mallard.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from mallard.storage.layout import DataLayout

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
    serve.add_argument("--workers", help="server processes: a number or auto (default 1)")
    # Set by the supervisor for the processes it starts, not by people:
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
    compact = commands.add_parser(
        "compact", help="merge the small Parquet files of finished days and of today now"
    )
    compact.add_argument("--config", type=Path, metavar="PATH", help="a TOML settings file")
    compact.add_argument("--data-dir", help="where all state lives (default ./data)")
    compact.add_argument(
        "--before",
        metavar="YYYY-MM-DD",
        help="compact days before this one (default: every finished day, and today so far)",
    )
    demo = commands.add_parser(
        "demo", help="serve a data dir filled with realistic synthetic traffic (a tour)"
    )
    demo.add_argument("--data-dir", default="./mallard-demo", help="default ./mallard-demo")
    demo.add_argument("--host", help="bind address (default 127.0.0.1)")
    demo.add_argument("--port", help="bind port, 0 for any free port (default 8000)")
    demo.add_argument("--events", type=_count, default=500_000, help="default 500000")
    days_help = f"days up to today, at most {MAX_DEMO_DAYS} (default 56)"
    demo.add_argument("--days", type=_days, default=56, help=days_help)
    demo.add_argument("--fresh", action="store_true", help="generate again even if data exists")
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _days(text: str) -> int:
    value = _count(text)
    if value > MAX_DEMO_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {MAX_DEMO_DAYS}")
    return value


DEMO_SITES = ["example.com", "shop.example.org", "blog.example.net"]
MAX_DEMO_DAYS = 3660  # ten years


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    """Fill the data dir with synthetic traffic (unless it has some), compact it, serve it."""
    import shutil

    from mallard.storage.layout import DataLayout

    layout = DataLayout(settings.data_dir)
    if args.fresh:
        shutil.rmtree(layout.root, ignore_errors=True)
    try:
        _demo_traffic(layout, args)
    except OSError as error:
        if problem := _setting_at_fault(error, settings):
            print(f"mallard: invalid setting {problem}", file=sys.stderr)
            return EXIT_USAGE
        raise
    print(
        f"demo: sites {', '.join(DEMO_SITES)}; open the URL of the 'listening on' line below",
        file=sys.stderr,
    )
    return _serve(dataclasses.replace(settings, workers=1), args, [])


def _demo_traffic(layout: DataLayout, args: argparse.Namespace) -> None:
    """Synthetic traffic, compacted, unless the data dir has some."""
    from mallard.progress import progress_bar
    from mallard.storage.compaction import compact
    from mallard.synthetic import generate

    if any(layout.events.glob("site_id=*")):
        print(f"demo: reusing the traffic in {layout.root} (--fresh for new)", file=sys.stderr)
    else:
        report = generate(
            layout.root,
            events=args.events,
            days=args.days,
            sites=DEMO_SITES,
            progress=progress_bar("demo: generating", "events"),
        )
        print(f"demo: {report.events:,} events for {', '.join(DEMO_SITES)}", file=sys.stderr)
        compact(
            layout,
            progress=progress_bar("demo: compacting", "days"),
            pairs_progress=progress_bar("demo: pairs and funnel steps", "days"),
        )


def _settings(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "data_dir", "workers")
    flags = {name: getattr(args, name, None) for name in names}
    return load_settings(config_file=getattr(args, "config", None), flags=flags)


def _compact(settings: Settings, before: str | None) -> int:
    from mallard.progress import progress_bar
    from mallard.query.model import FIRST_DAY, LAST_DAY
    from mallard.storage.compaction import compact
    from mallard.storage.layout import DataLayout

    try:
        day = dt.date.fromisoformat(before) if before else None
    except ValueError:
        print(f"mallard: invalid setting --before: {before!r} is not YYYY-MM-DD", file=sys.stderr)
        return EXIT_USAGE
    if day is not None and not FIRST_DAY <= day <= LAST_DAY:
        print(f"mallard: invalid setting --before: {before} is not between {FIRST_DAY} and "
              f"{LAST_DAY}", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    layout = DataLayout(settings.data_dir)
    if not layout.events.is_dir():
        print(f"mallard: no events under {settings.data_dir}", file=sys.stderr)
        return 1
    layout.create()  # a restored backup may hold events/ alone
    report = compact(
        layout,
        before=day,
        progress=progress_bar("compacting", "days"),
        pairs_progress=progress_bar("pairs and funnel steps", "days"),
    )
    print(
        f"compacted {report.files_in} files into {report.files_out} "
        f"({report.rows} rows, {report.partitions} partitions), "
        f"pairs and funnel steps of {report.pair_days} days, in {report.seconds:.1f} s",
        file=sys.stderr,
    )
    for skipped in report.skipped:
        print(f"mallard: not compacted: {skipped}", file=sys.stderr)
    return 1 if report.skipped else 0


def _serve(settings: Settings, args: argparse.Namespace, argv: list[str]) -> int:
    from mallard.auth.store import BrokenAuthStore
    from mallard.logs import configure_logging
    from mallard.server import ReplayFailed, ShutdownTimeout, serve
    from mallard.storage.erasure import BrokenErasures
    from mallard.supervisor import supervise

    configure_logging(settings.log_format)
    try:
        if getattr(args, "listen_fd", None) is not None:  # one of the supervisor's workers
            worker = partial(serve, listen_fd=args.listen_fd, worker=args.worker_index)
            trio.run(
                partial(worker, settings, ready_fd=args.ready_fd, lifeline_fd=args.lifeline_fd)
            )
        elif settings.workers > 1:
            return trio.run(supervise, settings, argv[1:])
        else:
            trio.run(serve, settings)
    except Exception as error:
        cause = _single_cause(error)
        if isinstance(cause, ShutdownTimeout):
            print(f"mallard: {cause}", file=sys.stderr)
        elif isinstance(cause, BrokenErasures | BrokenAuthStore | ReplayFailed):
            print(f"mallard: cannot start: {cause}", file=sys.stderr)
        elif isinstance(cause, OSError) and (problem := _setting_at_fault(cause, settings)):
            print(f"mallard: invalid setting {problem}", file=sys.stderr)
            return EXIT_USAGE
        elif isinstance(cause, OSError):
            print(f"mallard: cannot start: {cause}", file=sys.stderr)
        else:
            raise
        return 1
    return 0


def _setting_at_fault(error: OSError, settings: Settings) -> str | None:
    """The setting an error at start-up comes from (named, with the problem), if one."""
    address = f"{settings.host}:{settings.port}"
    if isinstance(error, socket.gaierror):
        return f"host: cannot resolve {settings.host!r} ({error.strerror})"
    if error.filename is not None:  # the data dir, inside it, or a folder to create for it
        path, data_dir = (Path(os.path.abspath(p)) for p in (error.filename, settings.data_dir))
        mine = path.is_relative_to(data_dir) or data_dir.is_relative_to(path)
        return f"data_dir: {error}" if mine else None
    if error.errno == errno.EADDRINUSE:
        return f"port: {address} is already in use"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"host: {settings.host} is not an address of this machine"
    if error.errno == errno.EACCES:
        return f"port: listening on {address} is not allowed ({error.strerror})"
    return None


def _single_cause(error: BaseException) -> BaseException:
    """The one exception inside nested nursery exception groups, if there is just one."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as error:
        print(f"mallard: invalid setting {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "compact":
        return _compact(settings, args.before)
    if args.command == "demo":
        return _demo(settings, args)
    return _serve(settings, args, argv)
