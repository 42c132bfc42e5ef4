"""Synthetic traffic straight into a data directory, for query benchmarks and demos.

    python benchmarks/generate.py DATA_DIR --events 1000000 --days 90 --sites 1 [--seed 1]

Writes Parquet files in Mallard's documented layout (see :mod:`mallard.synthetic`):
one file per site and UTC day, the last day being ``--end`` (default: today, UTC).
A progress bar goes to stderr, one summary line to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from mallard.progress import progress_bar
from mallard.synthetic import generate


def site_names(count: int) -> list[str]:
    """``example.com``, then ``site2.example.com``, ``site3.example.com``, ..."""
    return ["example.com"] + [f"site{i}.example.com" for i in range(2, count + 1)]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    parser.add_argument("--events", type=positive, default=1_000_000)
    parser.add_argument("--days", type=positive, default=90)
    parser.add_argument("--sites", type=positive, default=1, help="number of sites")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--end", type=dt.date.fromisoformat, help="last day, YYYY-MM-DD")
    args = parser.parse_args(argv)

    report = generate(
        args.data_dir,
        events=args.events,
        days=args.days,
        sites=site_names(args.sites),
        end=args.end,
        seed=args.seed,
        progress=progress_bar("generating", "events"),
    )
    print(
        f"{report.events:,} events, {report.files:,} files, "
        f"{report.bytes / 1e6:,.1f} MB on disk, {report.seconds:.2f} s, "
        f"{report.events / report.seconds:,.0f} events/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
