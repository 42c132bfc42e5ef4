"""The one nursery: everything Mallard runs while it serves.

Reading :func:`serve` tells what runs: the signal watcher, periodic upkeep
(idle rate-limit buckets, ended visits), the writer that turns accepted events
into Parquet, and hypercorn serving the app. On SIGINT/SIGTERM (or ``stop``)
hypercorn stops accepting and finishes its requests, the event channel closes,
the writer flushes everything it was given, and ``serve`` returns.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from mallard.api.app import create_app
from mallard.api.early_answers import finish_early_answers
from mallard.api.ingest import IngestEndpoint
from mallard.auth.store import AuthStore, database_path
from mallard.config import Settings
from mallard.ingest.geo import GeoLookup
from mallard.ingest.pipeline import Ingestor
from mallard.ingest.ratelimit import RateLimiter
from mallard.ingest.useragent import load_parsers
from mallard.ingest.visitor import VisitorIds, load_or_create_secret
from mallard.metrics import Metrics, worker_metrics
from mallard.query.engine import QueryEngine
from mallard.query.model import known_zones
from mallard.storage.compaction import compact
from mallard.storage.erasure import Tombstones, finish_erasures
from mallard.storage.layout import DataLayout
from mallard.storage.retention import expire
from mallard.storage.schema import Event
from mallard.storage.wal import recover
from mallard.storage.writer import EventWriter

log = logging.getLogger("mallard.server")

UPKEEP_INTERVAL = 60.0
RETENTION_INTERVAL = 86_400.0
# How long a thread may hold the GIL while another waits: short, so that query
# threads doing Python work cannot hold up the event loop for long.
GIL_SWITCH_INTERVAL = 0.001
STALLED_GRACE = 0.5  # seconds past hypercorn's graceful timeout before cutting stalled clients


class ShutdownTimeout(Exception):
    """Graceful shutdown took longer than ``shutdown_timeout``."""


class ReplayFailed(Exception):
    """The write-ahead logs left by a stopped server could not be written to Parquet."""


def hypercorn_config(settings: Settings, listen_fd: int | None = None) -> HypercornConfig:
    config = HypercornConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"fd://{listen_fd}" if listen_fd is not None else f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Requests still open at shutdown get a third of the shutdown budget (at most
    # 5 s: ingestion answers in milliseconds); the rest is kept for the final flush.
    config.graceful_timeout = min(settings.shutdown_timeout / 3, 5.0)
    return config


async def serve(
    settings: Settings,
    *,
    stop: trio.Event | None = None,
    listen_fd: int | None = None,
    worker: int | None = None,
    ready_fd: int | None = None,
    lifeline_fd: int | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGINT/SIGTERM or ``stop``; then flush everything and return.

    ``task_status.started`` receives the URL the server listens on. As one of
    ``--workers`` processes (``worker`` set), it accepts on the supervisor's
    socket ``listen_fd``, enforces its share of the rate limit and, once it
    serves, writes one byte to ``ready_fd`` (the supervisor waits for them),
    and stops as on SIGTERM when ``lifeline_fd`` (a pipe whose other end only
    the supervisor holds) reaches its end: the supervisor is gone.
    """
    stop = trio.Event() if stop is None else stop
    layout = DataLayout(settings.data_dir)
    layout.create()
    secret = settings.secret.encode() if settings.secret else load_or_create_secret(layout.keys)
    visitors = VisitorIds(secret)
    share = settings.workers if worker is not None else 1
    limiter = RateLimiter(settings.rate_limit / share, settings.effective_rate_burst / share)
    metrics = worker_metrics(layout) if worker is not None else Metrics()
    tombstones = Tombstones(layout)  # erasures: no writer or replay brings those events back
    tombstones.current()  # readable, or no start: no 202 for events that could not be written
    AuthStore(database_path(settings.data_dir)).check()  # before serving, not in its start-up
    known_zones()  # read once here (30 ms), not on the event loop at the first query
    load_parsers()  # likewise for the User-Agent parsers (150 ms) and the first event
    await _replay_write_ahead_logs(layout, tombstones)
    if unfinished := await trio.to_thread.run_sync(finish_erasures, layout, tombstones):
        log.warning("finished %d erasures a crash had cut short", unfinished)
    writer = EventWriter(
        layout,
        flush_count=settings.flush_count,
        flush_interval=settings.flush_interval,
        durability=settings.durability,
        metrics=metrics,
        tombstones=tombstones,
    )
    engine = QueryEngine(
        layout,
        pending=writer.unflushed,
        pending_sites=writer.unflushed_sites,
        logged_elsewhere=writer.logged_elsewhere,
        cache_entries=settings.query_cache_entries,
        memory_mb=settings.query_memory_mb,
    )
    events_send, events_receive = trio.open_memory_channel[Event](settings.queue_size)
    ingestor = Ingestor(
        settings,
        events_send,
        writer=writer,
        visitors=visitors,
        limiter=limiter,
        geo=GeoLookup(settings.geoip_db),
    )
    app = finish_early_answers(
        IngestEndpoint(
            ingestor,
            create_app(settings=settings, writer=writer, engine=engine, metrics=metrics),
            stopping=stop,
        )
    )

    gc.freeze()  # start-up objects (parsers, caches, tables) are never garbage: skip them
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, stop)
        if lifeline_fd is not None:
            nursery.start_soon(_stop_when_orphaned, lifeline_fd, stop)
        nursery.start_soon(_bound_shutdown, stop, nursery.cancel_scope, settings.shutdown_timeout)
        nursery.start_soon(_every, UPKEEP_INTERVAL, limiter.forget_idle)
        nursery.start_soon(_every, UPKEEP_INTERVAL, visitors.forget_inactive)
        if settings.compaction_interval and not worker:  # one compactor per data dir
            nursery.start_soon(_compact_every, settings.compaction_interval, layout, metrics)
        if settings.retention_days and not worker:
            nursery.start_soon(_expire_daily, layout, settings.retention_days)
        async with trio.open_nursery() as pipeline:  # done once the writer has flushed all
            pipeline.start_soon(writer.run, events_receive)
            config = hypercorn_config(settings, listen_fd)
            binds = await pipeline.start(_serve_http, app, config, stop, events_send)
            if worker is None:
                log.info("listening on %s", binds[0], extra={"url": binds[0]})
            else:
                log.info("worker %d serving", worker, extra={"worker": worker})
            if ready_fd is not None:
                with contextlib.suppress(OSError):  # a supervisor gone: nobody waits
                    os.write(ready_fd, b"!")
                os.close(ready_fd)
            task_status.started(binds[0])
        nursery.cancel_scope.cancel()
    engine.close()
    metrics.close()
    if nursery.cancel_scope.cancelled_caught and writer.pending:
        fate = (
            "they stay in the write-ahead log and are replayed at the next start"
            if writer.durable
            else "they are lost"
        )
        raise ShutdownTimeout(
            f"shutdown took longer than {settings.shutdown_timeout:g}s; "
            f"{writer.pending} events were not flushed: {fate}"
        )
    log.info("stopped; all accepted events are flushed")


async def _replay_write_ahead_logs(layout: DataLayout, tombstones: Tombstones) -> None:
    """Before serving: what stopped or crashed writers left in their WAL goes to Parquet."""
    try:
        report = await trio.to_thread.run_sync(recover, layout, tombstones)
    except OSError as error:  # the events stay in the log for the next start
        raise ReplayFailed(f"cannot replay the write-ahead log: {error}") from error
    if report.segments:
        log.info(
            "replayed %d events from %d WAL segments of %d writers into %d files in %.1f ms",
            report.events,
            report.segments,
            report.writers,
            report.files,
            report.seconds * 1000,
            extra={
                "events": report.events,
                "segments": report.segments,
                "writers": report.writers,
                "files": report.files,
                "duration_ms": report.seconds * 1000,
            },
        )


async def _serve_http(
    app: IngestEndpoint,
    config: HypercornConfig,
    stop: trio.Event,
    events: trio.MemorySendChannel[Event],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn until ``stop`` and its requests are done; then close ``events``.

    Closing the channel tells the writer that no more events will come.
    """
    async with events, trio.open_nursery() as nursery:
        binds = await nursery.start(_hypercorn, app, config, stop, nursery.cancel_scope)
        ports = {urlsplit(bind).port for bind in binds}
        nursery.start_soon(_cut_stalled_connections, stop, config.graceful_timeout, ports)
        task_status.started(binds)


async def _hypercorn(
    app: IngestEndpoint,
    config: HypercornConfig,
    stop: trio.Event,
    done: trio.CancelScope,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn until ``stop`` and its requests are done; then ``done`` is cancelled."""
    await hypercorn.trio.serve(
        app,  # type: ignore[arg-type]
        config,
        shutdown_trigger=stop.wait,
        task_status=task_status,
    )
    done.cancel()


async def _cut_stalled_connections(
    stop: trio.Event, graceful_timeout: float, ports: set[int | None]
) -> None:
    """Once hypercorn has had its graceful timeout, cut the connections it still holds.

    Hypercorn writes a response under a shield, so a client that stops reading
    (a half-read export) keeps its write waiting after every request was
    cancelled, and the process with it, and the final flush after it.
    """
    await stop.wait()
    await trio.sleep(graceful_timeout + STALLED_GRACE)
    if cut := shut_down_client_connections(ports):
        log.warning("cut %d connections whose clients stopped reading", cut)


def shut_down_client_connections(ports: Collection[int | None]) -> int:
    """Shut down this process's TCP connections on the local ``ports`` (found in
    ``/proc/self/fd``; none elsewhere): a write waiting on one fails at once. Only
    shut down, not closed: their owners close their descriptors."""
    sockets = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile, or not a socket
                duplicate = os.dup(int(name))
                try:
                    sockets.append(socket.socket(fileno=duplicate))
                except OSError:
                    os.close(duplicate)
    cut = 0
    for sock in sockets:
        with sock, contextlib.suppress(OSError):  # not connected: a listener
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if sock.type == socket.SOCK_STREAM and sock.getsockname()[1] in ports:
                sock.getpeername()
                sock.shutdown(socket.SHUT_RDWR)
                cut += 1
    return cut


async def _stop_on_signals(stop: trio.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not stop.is_set():
                log.info(
                    "received %s: finishing requests and flushing", signal.Signals(signum).name
                )
                stop.set()


async def _stop_when_orphaned(lifeline_fd: int, stop: trio.Event) -> None:
    """Set ``stop`` at the end of the supervisor's pipe: nobody is left to stop or restart us."""
    async with trio.lowlevel.FdStream(lifeline_fd) as lifeline:
        while await lifeline.receive_some():
            pass
    log.warning("the supervisor is gone: stopping")
    stop.set()


async def _bound_shutdown(stop: trio.Event, scope: trio.CancelScope, timeout: float) -> None:
    await stop.wait()
    scope.deadline = trio.current_time() + timeout


async def _compact_every(interval: float, layout: DataLayout, metrics: Metrics) -> None:
    """Merge the small files of each day (today so far too) every ``interval`` s, in a thread.

    Compaction only makes queries faster: a run that fails (a full disk, or
    anything unforeseen) is logged and the next one tries again, while
    ingestion and queries go on.
    """
    while True:
        try:
            await trio.to_thread.run_sync(compact, layout)
        except Exception as error:  # whatever it is (see above)
            metrics.compactions_failed.inc()
            log.error(
                "compaction failed: %s", error, exc_info=not isinstance(error, OSError),
                extra={"error": str(error)},
            )  # fmt: skip
        else:
            metrics.compactions_done.inc()
        await trio.sleep(interval)


async def _expire_daily(layout: DataLayout, keep_days: int) -> None:
    """Delete the days older than ``retention_days``: at start, then every day."""
    while True:
        try:
            await trio.to_thread.run_sync(expire, layout, keep_days)
        except OSError as error:
            log.error("retention failed: %s", error, extra={"error": str(error)})
        await trio.sleep(RETENTION_INTERVAL)


async def _every(interval: float, task: Callable[[float], object]) -> None:
    while True:
        await trio.sleep(interval)
        task(time.time())
