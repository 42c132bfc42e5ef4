"""``mallard serve --workers N``: N server processes sharing one listening socket.

The supervisor binds the socket (so ``--port 0`` picks one port for all), then
starts N ordinary ``mallard serve`` processes that inherit it. Each worker is a
whole server: its own trio nursery, writer and write-ahead log. A worker that
dies is started again; the new one replays the dead one's log before it serves,
while the others keep serving. SIGINT/SIGTERM are passed on to every worker,
each flushes what it accepted, and the supervisor exits 0 when they all did.
If the supervisor itself dies (``kill -9``, the OOM killer), the workers see
the pipe it held open close and stop the same way, instead of serving on
without anyone to restart or stop them.

Rate limits: each worker enforces ``rate_limit / N`` (and ``rate_burst / N``)
per site, so the total across workers is the configured one when the kernel
spreads connections evenly; compaction runs in worker 0 only.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

import trio

from mallard.config import Settings

log = logging.getLogger("mallard.supervisor")

RESTART_DELAY = 0.5


def listening_socket(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server((settings.host, settings.port), family=family, backlog=1024)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def supervise(settings: Settings, serve_args: list[str]) -> int:
    """Run ``settings.workers`` workers until a signal; returns the exit code.

    ``listening on`` is logged once every worker serves: each writes a byte to
    a pipe when it does (a restarted one too, which is read and ignored).
    """
    sock = listening_socket(settings)
    ready_read, ready_write = os.pipe()
    lifeline_read, lifeline_write = os.pipe()  # its end of file tells workers we are gone
    processes: dict[int, trio.Process] = {}
    stopping = trio.Event()
    started = trio.Event()  # every worker has served once
    codes: dict[int, int] = {}
    failed_to_start: list[int] = []  # the exit code of a worker that never served

    async def keep_running(index: int) -> None:
        command = [
            sys.executable, "-m", "mallard", "serve", *serve_args,
            "--listen-fd", str(sock.fileno()), "--worker-index", str(index),
            "--ready-fd", str(ready_write), "--lifeline-fd", str(lifeline_read),
        ]  # fmt: skip
        inherited = (sock.fileno(), ready_write, lifeline_read)
        while True:
            process = await trio.lowlevel.open_process(
                command, pass_fds=inherited, stdin=subprocess.DEVNULL
            )
            processes[index] = process
            code = await process.wait()
            if stopping.is_set():
                codes[index] = code
                return
            if not started.is_set():  # a bad setting or data dir: it would fail again
                log.error("worker %d could not start (exit code %d): stopping", index, code)
                failed_to_start.append(code)
                codes[index] = code
                stopping.set()
                for other in processes.values():
                    if other.returncode is None:
                        other.send_signal(signal.SIGTERM)
                return
            log.error("worker %d exited with code %d; starting it again", index, code)
            await trio.sleep(RESTART_DELAY)

    async def pass_signals_on(nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if not stopping.is_set():
                    log.info("received %s: stopping the workers", signal.Signals(signum).name)
                    stopping.set()
                    deadline = trio.current_time() + settings.shutdown_timeout + 1
                    nursery.cancel_scope.deadline = deadline
                for process in processes.values():
                    if process.returncode is None:
                        process.send_signal(signal.SIGTERM)

    async def announce_when_ready(ready: trio.lowlevel.FdStream) -> None:
        waiting = settings.workers
        while waiting > 0 and (data := await ready.receive_some()):
            waiting -= len(data)
        started.set()
        log.info("listening on %s (%d workers)", url_of(sock), settings.workers)
        while await ready.receive_some():  # restarted workers; nobody waits for them
            pass

    async with trio.lowlevel.FdStream(ready_read) as ready, trio.open_nursery() as nursery:
        nursery.start_soon(pass_signals_on, nursery)
        nursery.start_soon(announce_when_ready, ready)
        async with trio.open_nursery() as workers:
            for index in range(settings.workers):
                workers.start_soon(keep_running, index)
        nursery.cancel_scope.cancel()
    for fd in (ready_write, lifeline_read, lifeline_write):
        os.close(fd)
    for process in processes.values():
        if process.returncode is None:  # past the shutdown deadline
            process.kill()
    sock.close()
    if failed_to_start:
        return failed_to_start[0]
    failed = {index: code for index, code in codes.items() if code != 0}
    if failed or len(codes) < settings.workers:
        log.error("workers did not all stop cleanly: %s", failed or "timed out")
        return 1
    log.info("stopped; every worker flushed what it accepted")
    return 0
