"""Where ingestion spends its time: py-spy flame graphs of a loaded server.

    python benchmarks/profile_ingest.py [--seconds 10] [--out benchmarks/profiles]

Starts ``mallard serve`` (WAL, the defaults) twice: once loaded with single events
(``POST /api/event``, 16 connections, the load generator of ``bench_ingest``), once with
batches (``POST /api/events``, 1,000 events each, 4 senders). For each, py-spy samples
the server (half of ``--seconds`` for the flame graph, half for the table's stacks) and
writes a flame graph (SVG) and a text table of the
functions that hold the CPU (own time, and time including callees, for Mallard's
functions), next to each other in ``--out``. Needs ``py-spy`` (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_batch import USER_AGENT, batches
from bench_ingest import TARGETS, Server, progress
from loadgen import run_load

BENCH_DIR = Path(__file__).resolve().parent


def sample(pid: int, seconds: float, out: Path, name: str) -> Path:
    """py-spy record of ``pid``: a flame graph and the raw stacks for the table."""
    raw = out / f"{name}.stacks.txt"
    for output_format, path in (("flamegraph", out / f"{name}.svg"), ("raw", raw)):
        subprocess.run(
            ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds / 2))),
             "--rate", "200", "--nonblocking", "--full-filenames", "--format", output_format,
             "--output", str(path)],
            check=True, capture_output=True,
        )  # fmt: skip
    return raw


def _short(frame: str) -> str:
    """``f (/long/path/site-packages/pkg/mod.py:1)`` -> ``f (pkg/mod.py:1)``."""
    frame = frame.replace(f"({BENCH_DIR.parent}/", "(")
    return re.sub(r"\([^()]*/(?:site-packages|python3\.\d+)/", "(", frame)


def table(raw: Path, rows: int = 25) -> str:
    """Own and inclusive shares of the samples, per function."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(rows)]
    lines += ["", "including callees (Mallard's functions):"]
    ours = [(f, n) for f, n in inclusive.most_common() if "(mallard/" in f]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in ours[:rows]]
    return "\n".join(lines) + "\n"


def profile(name: str, load: Callable[[str, float], None], args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"mallard-profile-{name}-"))
    server = Server(TARGETS["mallard"], workdir)
    url = server.start()
    assert server.process is not None
    progress(f"{name}: server on {url}, loading and sampling for {args.seconds:g}s")
    worker = threading.Thread(target=load, args=(url, args.seconds + 3))
    worker.start()
    try:
        raw = sample(server.process.pid, args.seconds, args.out, name)
    finally:
        worker.join()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    (args.out / f"{name}.txt").write_text(table(raw))
    raw.unlink()
    progress(f"{name}: wrote {args.out / (name + '.svg')} and {name}.txt")


def single_events(url: str, seconds: float) -> None:
    run_load(url, connections=16, duration=seconds, processes=1)


def event_batches(url: str, seconds: float) -> None:
    bodies = batches(40)
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()

    def sender(index: int) -> None:
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/x-ndjson"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            while not stop.is_set():
                client.post("/api/events", content=bodies[index % len(bodies)])
                index += 4

    senders = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "profiles")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        parser.error("py-spy is not installed: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    profile("single-events", single_events, args)
    profile("batches", event_batches, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
