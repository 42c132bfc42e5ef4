"""Batch ingestion and buffer memory: ``POST /api/events`` with the WAL and without.

    python benchmarks/bench_batch.py [--events 150000] [--clients 4] [--flush-count 100000]

For each durability mode a fresh server (``flush_count`` events per Parquet batch, no
timed flush during the run) takes ``--events`` realistic events (the load generator's
bodies) in batches of 1,000 NDJSON lines from ``--clients`` concurrent senders. It
reports events/s, the per-request latency (p50/p99), the server's peak RSS while it
buffers, and, after SIGTERM, whether the Parquet rows equal the accepted events.
With ``flush_count = 100000`` this is the buffer-memory check of the ingestion issue:
the server holds up to two batches (one being written, one being collected).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import (
    MALLARD_COMMAND,
    RssSampler,
    Server,
    Target,
    count_parquet_rows,
    progress,
)
from loadgen import client_address_pool, make_event, percentile

BATCH = 1000
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


def batches(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [
        "\n".join(json.dumps(make_event(rng)[0]) for _ in range(BATCH)).encode()
        for _ in range(count)
    ]


def run(mode: str, args: argparse.Namespace, bodies: list[bytes]) -> dict[str, float | str]:
    env = {
        "MALLARD_DURABILITY": mode,
        "MALLARD_FLUSH_COUNT": str(args.flush_count),
        "MALLARD_FLUSH_INTERVAL": "3600",
        "MALLARD_COMPACTION_INTERVAL": "0",
    }
    target = Target(f"mallard-{mode}", MALLARD_COMMAND, env=env, stores_events=True)
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(target, Path(workdir))
        url = server.start()
        assert server.process is not None
        sampler = RssSampler(server.process.pid)
        sampler.start()
        addresses = client_address_pool()
        accepted = [0] * args.clients
        latencies: list[float] = []
        lock = threading.Lock()

        def sender(index: int) -> None:
            with httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=120) as client:
                for number in range(index, len(bodies), args.clients):
                    started = time.perf_counter()
                    response = client.post(
                        f"{url}/api/events",
                        content=bodies[number],
                        headers={"X-Forwarded-For": addresses[number % len(addresses)]},
                    )
                    elapsed = time.perf_counter() - started
                    accepted[index] += response.json()["accepted"]
                    with lock:
                        latencies.append(elapsed)

        progress(f"{target.name}: sending {len(bodies) * BATCH:,} events")
        started = time.perf_counter()
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        sampler.stop()
        server.stop()
        rows = count_parquet_rows(server.data_dir)
        latencies.sort()
        total = sum(accepted)
        return {
            "mode": mode,
            "events/s": total / seconds,
            "p50 ms": percentile(latencies, 50) * 1000,
            "p99 ms": percentile(latencies, 99) * 1000,
            "peak RSS MiB": sampler.peak_mib,
            "parquet": "OK" if rows == total else f"MISMATCH {rows} != {total}",
            "exit": str(server.exit_code),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--flush-count", type=int, default=100_000)
    parser.add_argument("--modes", default="wal,memory")
    args = parser.parse_args(argv)
    bodies = batches(max(args.events // BATCH, 1))
    results = [run(mode, args, bodies) for mode in args.modes.split(",")]
    columns = list(results[0])
    print(" | ".join(f"{c:>12}" for c in columns))
    for result in results:
        print(" | ".join(
            f"{v:>12,.1f}" if isinstance(v, float) else f"{v:>12}" for v in result.values()
        ))  # fmt: skip
    return 0 if all(r["parquet"] == "OK" and r["exit"] == "0" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
