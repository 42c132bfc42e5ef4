"""How fast can a funnel be over raw events? The naive funnel against its own parts.

    python benchmarks/funnel_floor.py DATA_DIR [--days 30] [--repeat 5]

``DATA_DIR`` is a dataset of ``bench_query.py`` (``/tmp/mallard-bench-query/query-…``).
Over the last ``--days`` days of its files, in one in-process DuckDB, it times the
naive funnel of the query benchmark (``/`` → ``/pricing`` → ``/signup``) beside the
parts any funnel over events has: reading the candidate pageviews, and one hash
aggregation of them per visitor (each visitor's first time on each step page, the
least a funnel that counts its entrants must do). Medians of ``--repeat`` runs after
one warm-up, and each as a share of the naive funnel: a funnel 2x faster than naive
must fit in 50 % including the HTTP round trip.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import duckdb

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_query import EVENTS, FUNNEL_PAGES, NAIVE, SITE  # noqa: E402

CANDIDATES = ", ".join("'" + page + "'" for page in FUNNEL_PAGES)
PARTS = {
    "naive funnel": NAIVE["funnel"],
    "candidate pageviews, read": f"""
SELECT count(*) FROM ev WHERE event_name = 'pageview' AND pathname IN ({CANDIDATES})""",
    "first time per visitor and step": f"""
, firsts AS (
    SELECT visitor_id, {
        ", ".join(
            f"min(timestamp) FILTER (pathname = '{page}') AS step{number}"
            for number, page in enumerate(FUNNEL_PAGES, start=1)
        )
    }
    FROM ev WHERE event_name = 'pageview' AND pathname IN ({CANDIDATES})
    GROUP BY visitor_id
)
SELECT count(step1) FROM firsts""",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    site_dir = args.data_dir / "events" / f"site_id={SITE}"
    days = sorted(path.name.removeprefix("date=") for path in site_dir.glob("date=*"))
    if not days:
        parser.error(f"no events of {SITE} under {args.data_dir}")
    last = dt.date.fromisoformat(days[-1])
    start = dt.datetime.combine(last - dt.timedelta(days=args.days - 1), dt.time(), dt.UTC)
    parameters = {"site": SITE, "start": start, "end": start + dt.timedelta(days=args.days)}
    events = EVENTS.format(glob=f"'{args.data_dir}/events/**/*.parquet'")
    connection = duckdb.connect()
    medians = {}
    for number, (name, sql) in enumerate(PARTS.items(), start=1):
        print(f"[{number}/{len(PARTS)}] {name}", file=sys.stderr)
        runs = []
        for _ in range(args.repeat + 1):
            started = time.perf_counter()
            connection.execute(events + sql, parameters).fetchall()
            runs.append((time.perf_counter() - started) * 1000)
        medians[name] = statistics.median(runs[1:])
    naive = medians["naive funnel"]
    print(f"{args.days} days ending {last}, medians of {args.repeat}\n")
    print("| part | median ms | share of naive |\n|---|--:|--:|")
    for name, median in medians.items():
        print(f"| {name} | {median:.1f} | {100 * median / naive:.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
