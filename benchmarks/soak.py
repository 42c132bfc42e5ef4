"""Soak test: memory over a long run at a fixed rate, and nothing lost at the end.

    python benchmarks/soak.py [--minutes 5] [--rate 600] [--warmup 60]

Starts ``mallard serve`` with its defaults (WAL, flush every 60 s), loads it with
``--rate`` single events per second (the ``bench_ingest`` load generator, open loop)
for ``--minutes``, and samples the server's RSS every 5 seconds. Prints the RSS over
time, the latency of the whole run, and the growth after ``--warmup`` seconds: flat
memory means the last minute's RSS is within a few MiB of the first minute after the
warm-up. After SIGTERM, the Parquet row count must equal the 202 count. A chart of
RSS over time goes next to the JSON results when matplotlib is importable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import TARGETS, Server, count_parquet_rows, memory_kib, process_tree, progress
from loadgen import LoadResult, run_load

BENCH_DIR = Path(__file__).resolve().parent
SAMPLE_EVERY = 5.0


def rss_mib(pid: int) -> float:
    total = 0
    for member in process_tree(pid):
        memory = memory_kib(member)
        if memory is not None:
            total += memory[0]
    return total / 1024


def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mallard-soak-"))
    server = Server(TARGETS["mallard"], workdir)
    url = server.start()
    assert server.process is not None
    seconds = args.minutes * 60
    progress(f"server on {url}; {args.rate:g} events/s for {seconds:g}s")
    outcome: dict[str, LoadResult] = {}
    loader = threading.Thread(
        target=lambda: outcome.setdefault(
            "load", run_load(url, connections=64, duration=seconds, rate=args.rate, processes=1)
        )
    )
    started = time.monotonic()
    loader.start()
    samples: list[tuple[float, float]] = []
    while loader.is_alive():
        samples.append((time.monotonic() - started, rss_mib(server.process.pid)))
        progress(f"  {samples[-1][0]:5.0f}s  RSS {samples[-1][1]:6.1f} MiB")
        loader.join(SAMPLE_EVERY)
    server.stop()
    load = outcome["load"]
    stored = count_parquet_rows(server.data_dir)
    after = [rss for at, rss in samples if at >= args.warmup]
    first_minute = [rss for at, rss in samples if args.warmup <= at < args.warmup + 60]
    last_minute = [rss for at, rss in samples if at >= samples[-1][0] - 60]
    return {
        "rate": args.rate,
        "seconds": seconds,
        "samples": samples,
        "latency_ms": load.latency_ms,
        "errors": load.errors,
        "non_202": load.non_202,
        "accepted": load.accepted_total,
        "stored": stored,
        "rss_after_warmup_min_mib": min(after),
        "rss_after_warmup_max_mib": max(after),
        "growth_mib": statistics.median(last_minute) - statistics.median(first_minute),
        "exit_code": server.exit_code,
    }


def write_chart(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.plot([t for t, _ in result["samples"]], [r for _, r in result["samples"]])
    axes.set_xlabel("seconds")
    axes.set_ylabel("server RSS, MiB")
    axes.set_ylim(bottom=0)
    axes.set_title(f"Soak at {result['rate']:g} events/s (WAL)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=600.0, help="events per second")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds not judged")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    result = soak(args)
    latency = result["latency_ms"]
    print(
        f"{result['rate']:g} events/s for {result['seconds']:g}s: p50 {latency['p50']:.1f} ms, "
        f"p99 {latency['p99']:.1f} ms, p99.9 {latency['p99.9']:.1f} ms; errors "
        f"{result['errors']}, non-202 {result['non_202']}\n"
        f"RSS after the warm-up: {result['rss_after_warmup_min_mib']:.1f}-"
        f"{result['rss_after_warmup_max_mib']:.1f} MiB; last minute vs first minute: "
        f"{result['growth_mib']:+.1f} MiB\n"
        f"stored {result['stored']:,} of {result['accepted']:,} accepted: "
        f"{'OK' if result['stored'] == result['accepted'] else 'MISMATCH'}; "
        f"exit code {result['exit_code']}"
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.results_dir / f"soak-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    if write_chart(result, path.with_suffix(".png")):
        print(f"chart: {path.with_suffix('.png')}")
    print(f"results: {path}")
    ok = result["stored"] == result["accepted"] and not result["errors"]
    return 0 if ok and result["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
