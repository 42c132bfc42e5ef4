"""Baselines for the ingestion benchmark: the least a server can do per event.

``app`` is a quart-trio app whose ``POST /api/event`` parses the JSON body and answers
``202`` with an empty body; nothing is validated, enriched or stored. ``asgi_app`` does
the same as a raw ASGI callable, without the framework (``--app asgi``). Both run on
hypercorn's trio worker in one process.

The benchmark runner starts it as ``python benchmarks/bare_app.py --port 0``: that serves
through ``hypercorn.trio.serve`` in-process, configured as ``mallard serve`` configures
it, logs ``listening on http://HOST:PORT`` the same way and stops gracefully on SIGTERM.
By hand, from the repository root, the hypercorn command line does the same serving::

    python -m hypercorn -k trio -w 0 --bind 127.0.0.1:8001 benchmarks.bare_app:app

(``-w 0`` keeps one process instead of a supervisor plus a spawned worker; in that mode
hypercorn installs no signal handler, so SIGTERM kills it rather than stopping it).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

import trio
from quart import request
from quart_trio import QuartTrio

app = QuartTrio(__name__)


@app.post("/api/event")
async def event() -> tuple[str, int]:
    await request.get_json(force=True)
    return "", 202


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same endpoint as a raw ASGI callable: hypercorn's own ceiling, no framework.

    Mallard's ``/api/event`` is also plain ASGI in front of its Quart app, so this is the
    fairer "nothing but HTTP and JSON" reference for it (``--app asgi``).
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/api/event" and scope["method"] == "POST":
        json.loads(body)
        status = 202
    else:
        status = 404
    headers = [(b"content-length", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


APPS = {"quart": app, "asgi": asgi_app}


async def _serve(bind: str, served: Any, announce: bool = True) -> None:
    import hypercorn.trio
    from hypercorn.config import Config

    config = Config()  # as mallard.server configures hypercorn: no access log
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    stop = trio.Event()

    async def stop_on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals)
        async with trio.open_nursery() as http:  # done when hypercorn has shut down
            serve = functools.partial(
                hypercorn.trio.serve, served, config, shutdown_trigger=stop.wait
            )
            binds = await http.start(serve)
            if announce:
                print(f"bare app: listening on {binds[0]}", file=sys.stderr, flush=True)
        nursery.cancel_scope.cancel()


def _serve_forked(host: str, port: int, served: Any, workers: int) -> None:
    """``workers`` processes accepting on one socket, as ``mallard serve --workers N``."""
    listener = socket.create_server((host, port), backlog=1024)
    listener.set_inheritable(True)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            trio.run(_serve, f"fd://{listener.fileno()}", served, False)
            os._exit(0)
        children.append(pid)
    address = listener.getsockname()
    print(f"bare app: listening on http://{address[0]}:{address[1]}", file=sys.stderr, flush=True)
    received = signal.sigwait({signal.SIGINT, signal.SIGTERM})
    for pid in children:
        os.kill(pid, received)
    for pid in children:
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--app", choices=sorted(APPS), default="quart")
    parser.add_argument("--workers", type=int, default=1, help="processes on one socket")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.workers > 1:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        _serve_forked(args.host, args.port, APPS[args.app], args.workers)
    else:
        trio.run(_serve, f"{args.host}:{args.port}", APPS[args.app])


if __name__ == "__main__":
    main()
