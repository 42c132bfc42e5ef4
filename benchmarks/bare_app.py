"""The baseline for the ingestion benchmark: the least a quart-trio app can do per event.

``POST /api/event`` parses the JSON body and answers ``202`` with an empty body; nothing
is validated, enriched or stored. Run on hypercorn's trio worker, in one process, as
Mallard runs (the benchmark runner starts it so)::

    python -m hypercorn -k trio -w 0 --bind 127.0.0.1:0 benchmarks.bare_app:app

(run from the repository root; ``-w 0`` keeps hypercorn in one process instead of a
supervisor plus a worker, so the measured RSS is that of the one serving process).
``python benchmarks/bare_app.py --port 0`` does the same through ``hypercorn.trio.serve``
and logs ``listening on http://HOST:PORT`` like ``mallard serve``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio
from quart import request
from quart_trio import QuartTrio

app = QuartTrio(__name__)


@app.post("/api/event")
async def event() -> tuple[str, int]:
    await request.get_json(force=True)
    return "", 202


async def _serve(host: str, port: int) -> None:
    import hypercorn.trio
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    stop = trio.Event()

    async def stop_on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals)
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        print(f"bare app: listening on {binds[0]}", file=sys.stderr, flush=True)
        await stop.wait()
        nursery.cancel_scope.deadline = trio.current_time() + 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    trio.run(_serve, args.host, args.port)


if __name__ == "__main__":
    main()
