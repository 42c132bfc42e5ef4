"""The machine's own floor under ingestion latency: fsyncs and wake-ups, without Mallard.

    python benchmarks/fsync_probe.py [--dir DIR] [--seconds 5] [--rate 300]

Appends a small record to a file in ``--dir`` and fsyncs it ``--rate`` times a
second, as the write-ahead log does for each group commit, sleeping in between.
Prints JSON: the fsync latency percentiles, and how late each sleep woke up
(also percentiles, in ms). It runs in a process of its own with no Mallard code,
so what slows it while queries run elsewhere on the machine (the disk, the
kernel, the hypervisor) slows every server on it. ``bench_query.py`` runs it
idle and under the same queries as its ingestion phase, beside that phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import percentile  # the same percentiles as the ingestion latencies beside

RECORD = b"x" * 300  # about one event in the write-ahead log


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {f"p{pct}": round(percentile(ordered, pct), 3) for pct in (50, 90, 99)}


def probe(folder: Path, seconds: float, rate: float) -> dict[str, object]:
    """Append and fsync ``rate`` times a second for ``seconds``; latencies in ms."""
    interval = 1 / rate
    fsyncs: list[float] = []
    lateness: list[float] = []
    with tempfile.NamedTemporaryFile(dir=folder, prefix="fsync-probe-") as file:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            file.write(RECORD)
            file.flush()
            started = time.perf_counter()
            os.fsync(file.fileno())
            fsyncs.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            time.sleep(interval)
            lateness.append((time.perf_counter() - started - interval) * 1000)
    return {
        "samples": len(fsyncs),
        "fsync_ms": percentiles(fsyncs),
        "wakeup_late_ms": percentiles(lateness),
    }


def run_probe(folder: Path, seconds: float, rate: float) -> dict[str, object]:
    """:func:`probe` in a fresh Python process (none of the caller's threads or GIL)."""
    command = [sys.executable, __file__, "--dir", str(folder), "--seconds", str(seconds),
               "--rate", str(rate)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=300.0, help="fsyncs per second")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive")
    print(json.dumps(probe(args.dir, args.seconds, args.rate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
