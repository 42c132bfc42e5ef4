"""Query benchmark: Mallard's stats endpoints against naive DuckDB SQL on the same files.

    python benchmarks/bench_query.py [--sizes 10k,1m,10m] [--days 90] [--repeat 5]

For each size, N synthetic events over ``--days`` UTC days for one site, ending today, are
written with :func:`mallard.synthetic.generate` (cached under ``--data-root``, so re-runs
skip it), compacted as the server's hourly compaction leaves it (every day one sorted file
with its visit rollup, pairs for the days before today; today's last twenty-fourth of
events, an average hour's traffic, in a file flushed since), and a fresh
``python -m mallard serve`` is started on them (no admin password: loopback may ask).
For the ranges ``30d`` and ``all``, every question is timed over HTTP and, right after,
as plain SQL in an in-process DuckDB over
``read_parquet('<dir>/events/**/*.parquet', hive_partitioning = true)``: one warm-up
each, then ``--repeat`` runs (median and p90). The answers are compared (``OK`` /
``MISMATCH``); the server's peak RSS is sampled throughout.

Results go to stdout as a table, to ``benchmarks/results/query-<timestamp>.json`` and,
when matplotlib is importable, to a chart next to it (HTTP vs naive, largest size).
Progress goes to stderr. Exit code 1 on a mismatch, an HTTP error or a server that did
not exit 0 after SIGTERM; 2 when a server did not start.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mallard.progress import progress_bar
from mallard.storage.compaction import compact, compact_partition
from mallard.storage.layout import DataLayout, day_number, new_writer_id
from mallard.storage.parquet import write_batch
from mallard.synthetic import generate

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from bench_ingest import (  # noqa: E402
    MALLARD_COMMAND,
    RssSampler,
    Server,
    Target,
    filesystem_of,
    git_describe,
    machine_info,
    progress,
)
from fsync_probe import run_probe  # noqa: E402
from loadgen import run_load  # noqa: E402

T = TypeVar("T")
Rows = list[tuple[Any, ...]]

SITE = "example.com"
RANGES = ("30d", "all")
HTTP_TIMEOUT = 300.0
PROBE_SECONDS = 5.0  # each fsync_probe run, idle and under queries
SIZE_SUFFIXES = {"k": 1_000, "m": 1_000_000}
MANIFEST = "bench-manifest.json"
SERVER = Target(
    "mallard",
    MALLARD_COMMAND,
    env={"MALLARD_COMPACTION_INTERVAL": "0", "MALLARD_QUERY_CACHE_ENTRIES": "0"},
    description="python -m mallard serve on the generated data; no compaction during the run, "
    "no answer cache (every run is computed)",
)

# --- the questions ---------------------------------------------------------------------

MAIN_METRICS = "visitors,visits,pageviews,views_per_visit,bounce_rate,visit_duration"
FUNNEL_PAGES = ("/", "/pricing", "/signup")

# The naive SQL: each statement reads the files afresh, filtered by site and time only.
EVENTS = """WITH ev AS (
    SELECT * FROM read_parquet({glob}, hive_partitioning = true)
    WHERE site_id = $site AND timestamp >= $start AND timestamp < $end
)"""
VISITS = """, marked AS (
    SELECT *, coalesce(timestamp - lag(timestamp) OVER visitor > INTERVAL 30 MINUTE
                       OR date <> lag(date) OVER visitor, true)::INT AS opens
    FROM ev WINDOW visitor AS (PARTITION BY visitor_id ORDER BY timestamp)
), numbered AS (
    SELECT *, sum(opens) OVER (PARTITION BY visitor_id ORDER BY timestamp
                               ROWS UNBOUNDED PRECEDING) AS visit_no
    FROM marked
), visits AS (
    SELECT visitor_id, visit_no, count(*) AS events,
           count(*) FILTER (event_name = 'pageview') AS pageviews,
           epoch(max(timestamp) - min(timestamp)) AS duration{extra}
    FROM numbered GROUP BY visitor_id, visit_no
)"""


def _visits(value: str = "") -> str:
    """The ``marked``, ``numbered`` and ``visits`` CTEs; ``value``: one more column per visit."""
    return VISITS.format(extra=f",\n           {value} AS value" if value else "")


VISIT_TOTALS = """count(DISTINCT visitor_id) AS visitors, count(*) AS visits,
       round(100 * count(*) FILTER (events = 1 AND pageviews = 1) / count(*)) AS bounce_rate,
       round(avg(duration)) AS visit_duration"""
NAIVE = {
    "main": _visits()
    + """
SELECT count(DISTINCT visitor_id) AS visitors, count(*) AS visits, sum(pageviews) AS pageviews,
       round(sum(pageviews) / count(*), 2) AS views_per_visit,
       round(100 * count(*) FILTER (events = 1 AND pageviews = 1) / count(*)) AS bounce_rate,
       round(avg(duration)) AS visit_duration
FROM visits""",
    "timeseries": """
SELECT strftime(date_trunc('day', timezone('UTC', timestamp)), '%Y-%m-%d') AS day,
       count(DISTINCT visitor_id) AS visitors, count(*) FILTER (event_name = 'pageview') AS views
FROM ev GROUP BY day ORDER BY day""",
    "pages": """
SELECT pathname, count(DISTINCT visitor_id) AS visitors, count(*) AS pageviews
FROM ev WHERE event_name = 'pageview'
GROUP BY pathname ORDER BY visitors DESC, pathname LIMIT 10""",
    "sources": _visits("any_value(referrer_source) FILTER (opens = 1)")
    + f"""
SELECT coalesce(value, '(none)') AS source, {VISIT_TOTALS}
FROM visits GROUP BY source ORDER BY visitors DESC, source LIMIT 10""",
    "entry_pages": _visits("arg_min(pathname, timestamp) FILTER (event_name = 'pageview')")
    + f"""
SELECT coalesce(value, '(none)') AS entry_page, {VISIT_TOTALS}
FROM visits GROUP BY entry_page ORDER BY visitors DESC, entry_page LIMIT 10""",
    "exit_pages": _visits("arg_max(pathname, timestamp) FILTER (event_name = 'pageview')")
    + """
SELECT coalesce(value, '(none)') AS exit_page, count(DISTINCT visitor_id) AS visitors,
       count(*) AS visits
FROM visits GROUP BY exit_page ORDER BY visitors DESC, exit_page LIMIT 10""",
    **{
        name: f"""
SELECT coalesce({column}, '(none)') AS value, count(DISTINCT visitor_id) AS visitors,
       round(100 * count(DISTINCT visitor_id) / (SELECT count(DISTINCT visitor_id) FROM ev), 2)
           AS percentage
FROM ev GROUP BY value ORDER BY visitors DESC, value LIMIT 10"""
        for name, column in (
            ("devices", "device_type"),
            ("browsers", "browser"),
            ("countries", "country_code"),
        )
    },
    "events": """
SELECT event_name, count(DISTINCT visitor_id) AS visitors, count(*) AS events,
       sum(revenue_amount) AS revenue
FROM ev GROUP BY event_name ORDER BY visitors DESC, event_name LIMIT 10""",
    "funnel": """, views AS (
    SELECT visitor_id, timestamp, pathname FROM ev WHERE event_name = 'pageview'
), s1 AS (
    SELECT visitor_id, min(timestamp) AS entered, min(timestamp) AS reached
    FROM views WHERE pathname = '/' GROUP BY visitor_id
)"""
    + "".join(
        f""", s{step} AS (
    SELECT v.visitor_id, any_value(p.entered) AS entered, min(v.timestamp) AS reached
    FROM views v JOIN s{step - 1} p USING (visitor_id)
    WHERE v.pathname = '{page}' AND v.timestamp >= p.reached
      AND v.timestamp <= p.entered + INTERVAL 1 DAY
    GROUP BY v.visitor_id
)"""
        for step, page in enumerate(FUNNEL_PAGES[1:], start=2)
    )
    + "\n"
    + " UNION ALL ".join(
        f"SELECT {step} AS step, count(*) AS visitors FROM s{step}"
        for step in range(1, len(FUNNEL_PAGES) + 1)
    )
    + " ORDER BY step",
    "retention": """, active AS (
    SELECT DISTINCT visitor_id, date_trunc('week', timezone('UTC', timestamp))::DATE AS week
    FROM ev
), cohorts AS (
    SELECT visitor_id, min(week) AS cohort FROM active GROUP BY visitor_id
)
SELECT strftime(cohort, '%Y-%m-%d') AS cohort_week, datediff('week', cohort, week) AS period,
       count(*) AS visitors
FROM active JOIN cohorts USING (visitor_id) GROUP BY ALL ORDER BY cohort_week, period""",
}


def _labelled(answer: dict[str, Any], metrics: int) -> Rows:
    """Rows of a Stats API answer as (dimension, metric, ...), the first ``metrics`` only."""
    return [(row["dimensions"][0], *row["metrics"][:metrics]) for row in answer["results"]]


@dataclasses.dataclass(frozen=True)
class Case:
    """A question: HTTP requests fired at once, their naive SQL, and how to compare them.

    ``answer`` turns the first HTTP answer into rows that must equal the leading columns
    of the first naive statement's rows; None: timing only.
    """

    name: str
    requests: tuple[tuple[str, dict[str, str]], ...]  # (route under /api/stats/, parameters)
    sql: tuple[str, ...]  # keys of NAIVE, one per request
    answer: Callable[[Any], Rows] | None = None


def _request(name: str) -> tuple[str, dict[str, str]]:
    if name == "main":
        return "main", {"metrics": MAIN_METRICS}
    if name == "timeseries":
        return "timeseries", {"interval": "day"}
    return f"breakdown/{name}", {"limit": "10"}


DASHBOARD = (
    "main", "timeseries", "pages", "entry_pages", "exit_pages", "sources", "devices", "browsers",
    "countries", "events",
)  # fmt: skip
# the dashboard's other breakdowns, and how many of their metrics the naive SQL has too
BREAKDOWN_CHECKS = (
    ("entry_pages", 2), ("exit_pages", 2), ("devices", 1), ("browsers", 1), ("countries", 1),
    ("events", 2),
)  # fmt: skip
CASES = (
    Case(
        "main",
        (_request("main"),),
        ("main",),
        lambda answer: [tuple(answer["results"][0]["metrics"][:3])],  # visitors, visits, views
    ),
    Case(
        "timeseries",
        (_request("timeseries"),),
        ("timeseries",),
        # empty buckets are filled in by the server, absent from the naive SQL's groups
        lambda answer: [row for row in _labelled(answer, 2) if any(row[1:])],
    ),
    Case("pages", (_request("pages"),), ("pages",), lambda answer: _labelled(answer, 2)),
    Case("sources", (_request("sources"),), ("sources",), lambda answer: _labelled(answer, 2)),
    *(
        Case(name, (_request(name),), (name,), functools.partial(_labelled, metrics=metrics))
        for name, metrics in BREAKDOWN_CHECKS
    ),
    Case(
        "funnel",
        (("funnel", {"steps": ",".join(f"page:{page}" for page in FUNNEL_PAGES)}),),
        ("funnel",),
        lambda answer: [(step["step"], step["visitors"]) for step in answer["steps"]],
    ),
    Case(
        "retention",
        (("retention", {"interval": "week"}),),
        ("retention",),
        lambda answer: [
            (cohort["cohort"], period["offset"], period["visitors"])
            for cohort in answer["cohorts"]
            for period in cohort["periods"]
            if period["visitors"]
        ],
    ),
    Case("dashboard", tuple(_request(name) for name in DASHBOARD), DASHBOARD),
)


def range_bounds(period: str, today: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """``[start, end)`` in UTC as the server resolves ``period`` (``all`` starts in 2000)."""
    first = dt.date(2000, 1, 1) if period == "all" else today - dt.timedelta(days=29)
    last = today + dt.timedelta(days=1)
    return (
        dt.datetime.combine(first, dt.time(), dt.UTC),
        dt.datetime.combine(last, dt.time(), dt.UTC),
    )


# --- running ---------------------------------------------------------------------------


def http_get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    """One GET on a fresh connection: status and body."""
    connection = http.client.HTTPConnection(*address, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def run_sql(connection: duckdb.DuckDBPyConnection, sql: str, parameters: dict[str, Any]) -> Rows:
    with connection.cursor() as cursor:
        return cursor.execute(sql, parameters).fetchall()


def timed(jobs: Sequence[Callable[[], T]], pool: ThreadPoolExecutor) -> tuple[float, list[T]]:
    """Run the jobs at once (inline when there is one): wall time in ms, their results."""
    started = time.perf_counter()
    results = [jobs[0]()] if len(jobs) == 1 else list(pool.map(lambda job: job(), jobs))
    return (time.perf_counter() - started) * 1000, results


def percentile(values: Sequence[float], share: float) -> float:
    """Linear interpolation between the closest ranks (0.5: the median)."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass
class Context:
    """What every measurement of one size shares."""

    size: str
    address: tuple[str, int]
    connection: duckdb.DuckDBPyConnection
    glob: str
    today: dt.date
    repeat: int
    pool: ThreadPoolExecutor


def _path(route: str, extra: dict[str, str], period: str) -> str:
    return f"/api/stats/{route}?" + urllib.parse.urlencode(
        {"site_id": SITE, "period": period, **extra}
    )


def measure(case: Case, period: str, context: Context) -> dict[str, Any]:
    """Warm-up plus ``repeat`` runs of the HTTP requests and the naive SQL, interleaved."""
    start, end = range_bounds(period, context.today)
    parameters = {"site": SITE, "start": start, "end": end}
    http_jobs = [
        functools.partial(http_get, context.address, _path(route, extra, period))
        for route, extra in case.requests
    ]
    events = EVENTS.format(glob="'" + context.glob.replace("'", "''") + "'")
    naive_jobs = [
        functools.partial(run_sql, context.connection, events + NAIVE[name], parameters)
        for name in case.sql
    ]
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()  # "<status> <route>" of the answers other than 200
    error_bodies: list[bytes] = []

    def run_http() -> tuple[float, list[tuple[int, bytes]]]:
        elapsed, answers = timed(http_jobs, context.pool)
        for (route, _), (status, body) in zip(case.requests, answers, strict=True):
            statuses[status] += 1
            if status != 200:
                failures[f"{status} {route}"] += 1
                error_bodies.append(body)
        return elapsed, answers

    _, first_answers = run_http()  # the warm-up's answers are the ones compared
    rows = timed(naive_jobs, context.pool)[1][0]
    http_ms: list[float] = []
    naive_ms: list[float] = []
    for _ in range(context.repeat):
        http_ms.append(run_http()[0])
        naive_ms.append(timed(naive_jobs, context.pool)[0])
    record: dict[str, Any] = {
        "size": context.size,
        "range": period,
        "query": case.name,
        "requests": [job.args[1] for job in http_jobs],
        "http_ms": http_ms,
        "naive_ms": naive_ms,
        "http_median_ms": percentile(http_ms, 0.5),
        "http_p90_ms": percentile(http_ms, 0.9),
        "naive_median_ms": percentile(naive_ms, 0.5),
        "naive_p90_ms": percentile(naive_ms, 0.9),
        "statuses": {str(status): count for status, count in statuses.items()},
    }
    record["ratio"] = record["naive_median_ms"] / record["http_median_ms"]
    if failures:
        record["check"] = "HTTP " + ",".join(
            f"{status}x{count}" for status, count in sorted(statuses.items()) if status != 200
        )
        record["failures"] = dict(failures)
        record["error"] = error_bodies[0][:500].decode(errors="replace")
    elif case.answer is not None:
        expected = case.answer(json.loads(first_answers[0][1]))
        width = len(expected[0]) if expected else 0
        got = [tuple(row[:width]) for row in rows]
        record["check"] = "OK" if got == expected else "MISMATCH"
        if case.name == "main" or got != expected:
            record["http_rows"], record["naive_rows"] = expected, got
    else:
        record["check"] = "-"
    return record


# --- data ------------------------------------------------------------------------------


def ingest_under_queries(url: str, context: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Ingestion latency at a fixed rate, idle and while heavy queries run (same server).

    ``--ingest-rounds`` rounds, each an idle run then runs under load, so a
    disturbance on the shared machine hits both alike; the ratio is of the
    median p99s. Two heavy loads, each for a whole measured window: the
    all-time dashboard's 10 requests at once, fired again as soon as they all
    return, and the same requests one at a time (always exactly one heavy
    query running, as the query issue words it). Each round then runs
    :mod:`fsync_probe` idle and under the dashboards: the machine's own fsync
    and wake-up latencies, with no Mallard code, beside Mallard's. Events go
    to the load generator's sites; the caller removes what they add to the
    dataset (:func:`remove_ingested`).
    """

    def load() -> dict[str, Any]:
        return run_load(url, connections=16, duration=args.ingest_seconds,
                        rate=args.ingest_rate, warmup=1.0, processes=1).to_dict()  # fmt: skip

    def machine() -> dict[str, Any]:
        return run_probe(args.data_root, PROBE_SECONDS, args.ingest_rate)

    def under_queries(measure: Callable[[], T], at_once: bool = True) -> tuple[T, int]:
        stop = threading.Event()
        queries = [0]

        def heavy() -> None:
            jobs = [
                functools.partial(http_get, context.address, _path(route, extra, "all"))
                for route, extra in map(_request, DASHBOARD)
            ]
            while not stop.is_set():
                if at_once:
                    timed(jobs, context.pool)
                    queries[0] += len(jobs)
                    continue
                for job in jobs:
                    if stop.is_set():
                        break
                    job()
                    queries[0] += 1

        worker = threading.Thread(target=heavy)
        worker.start()
        try:
            return measure(), queries[0]
        finally:
            stop.set()
            worker.join()

    idle, busy, single, probe_idle, probe_busy = [], [], [], [], []
    queries = queries_single = 0
    for _ in range(args.ingest_rounds):
        idle.append(load())
        result, fired = under_queries(load)
        busy.append(result)
        queries += fired
        result, fired = under_queries(load, at_once=False)
        single.append(result)
        queries_single += fired
        probe_idle.append(machine())
        probe_busy.append(under_queries(machine)[0])

    def median_of(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(run["latency_ms"][key] for run in runs)

    def probe_median(runs: list[dict[str, Any]], measure: str) -> float:
        return statistics.median(run[measure]["p99"] for run in runs)

    return {
        "rate": args.ingest_rate,
        "idle": idle,
        "busy": busy,
        "queries_during": queries,
        "idle_p50_ms": median_of(idle, "p50"),
        "idle_p99_ms": median_of(idle, "p99"),
        "busy_p50_ms": median_of(busy, "p50"),
        "busy_p99_ms": median_of(busy, "p99"),
        "p99_ratio": median_of(busy, "p99") / median_of(idle, "p99"),
        "single": single,
        "queries_single": queries_single,
        "single_p50_ms": median_of(single, "p50"),
        "single_p99_ms": median_of(single, "p99"),
        "single_p99_ratio": median_of(single, "p99") / median_of(idle, "p99"),
        "probe_idle": probe_idle,
        "probe_busy": probe_busy,
        **{
            f"{measure}_p99_{phase}": probe_median(runs, measure)
            for measure in ("fsync_ms", "wakeup_late_ms")
            for phase, runs in (("idle", probe_idle), ("busy", probe_busy))
        },
        "errors": sum(run["errors"] for run in idle + busy + single),
    }


def _p99s(runs: list[dict[str, Any]]) -> str:
    return "/".join(f"{run['latency_ms']['p99']:.1f}" for run in runs)


def _probe_p99s(ingestion: dict[str, Any], measure: str) -> str:
    """The probe's p99s of ``measure``, idle then under queries, each round's."""
    return " vs ".join(
        "/".join(f"{run[measure]['p99']:.2f}" for run in ingestion[f"probe_{phase}"])
        for phase in ("idle", "busy")
    )


def event_files(data_dir: Path) -> set[Path]:
    return set((data_dir / "events").glob("**/*.parquet"))


def remove_ingested(data_dir: Path, generated: set[Path]) -> int:
    """Keep the cached dataset as generated: drop every event file the server added
    (how many)."""
    added = event_files(data_dir) - generated
    for file in added:
        file.unlink()
    for site_dir in (data_dir / "events").glob("site_id=*"):
        if site_dir.name != f"site_id={SITE}":
            shutil.rmtree(site_dir, ignore_errors=True)
    return len(added)


def remove_leftovers(directory: Path, manifest: dict[str, Any]) -> None:
    """What a run killed before its clean-up (or anything else) added to a cached
    dataset goes: its events, and the write-ahead logs a server would replay into it."""
    removed = remove_ingested(directory, {directory / name for name in manifest["event_files"]})
    shutil.rmtree(directory / "wal", ignore_errors=True)
    if removed:
        progress(f"  removed {removed} event files that an earlier run left behind")


def parse_setting(text: str) -> tuple[str, str]:
    """``MALLARD_DURABILITY=memory`` -> ("MALLARD_DURABILITY", "memory")."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name.strip(), value


def server_target(args: argparse.Namespace) -> Target:
    """The benchmark's server, with the ``--server-env`` settings added to its environment."""
    return dataclasses.replace(SERVER, env={**SERVER.env, **dict(args.server_env)})


def parse_sizes(text: str) -> list[tuple[str, int]]:
    """``10k,1m,2500`` -> [("10k", 10000), ("1m", 1000000), ("2500", 2500)]."""
    sizes = []
    for item in text.lower().split(","):
        label = item.strip()
        try:
            scale = SIZE_SUFFIXES.get(label[-1:], 1)
            events = round(float(label[:-1] if scale > 1 else label) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{label!r} is not a size like 10k or 1m") from None
        if events < 1:
            raise argparse.ArgumentTypeError(f"size {label!r} must be at least one event")
        sizes.append((label, events))
    return sizes


def hold_back_last_hour(layout: DataLayout, today: dt.date) -> pa.Table:
    """Take today's latest twenty-fourth of events (an hour's worth) out of its files."""
    files = sorted(layout.partition(SITE, day_number(today)).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(file) for file in files]).sort_by("timestamp")
    earlier = table.num_rows - table.num_rows // 24
    for file in files:
        file.unlink()
    write_batch(table.slice(0, earlier), layout, f"{new_writer_id()}-00000000")
    return table.slice(earlier)


def prepare_dataset(events: int, args: argparse.Namespace, today: dt.date) -> dict[str, Any]:
    """The cached data directory for ``events``; generated when missing or not ending today."""
    directory = args.data_root / f"query-{events}ev-{args.days}d-seed{args.seed}"
    manifest_path = directory / MANIFEST
    wanted = {
        "events": events,
        "days": args.days,
        "seed": args.seed,
        "site": SITE,
        "end": today.isoformat(),
        "layout": "compacted with visit rollups (seen columns) and pairs through yesterday, "
        "today but for its last hour",
    }
    try:
        manifest = json.loads(manifest_path.read_text())
        cached = {key: manifest.get(key) for key in wanted} == wanted and "event_files" in manifest
    except (OSError, ValueError):
        cached = False
    if cached:
        progress(f"  reusing {directory} (generated earlier)")
        remove_leftovers(directory, manifest)
        # derived data of another Mallard version (pairs, steps) is built again here,
        # as the server's compaction would
        compact(DataLayout(directory), before=today, pairs_progress=progress_bar("  pairs", "days"))
    else:
        shutil.rmtree(directory, ignore_errors=True)
        progress(f"  generating {events:,} events over {args.days} days into {directory}")
        report = generate(
            directory,
            events=events,
            days=args.days,
            sites=[SITE],
            end=today,
            seed=args.seed,
            progress=progress_bar("  generating", "events"),
        )
        progress("  compacting: each day becomes one sorted file with its visits and pairs")
        layout = DataLayout(directory)
        last_hour = hold_back_last_hour(layout, today)
        # yesterday too, although just written: the server's compaction waits until a
        # recent day's files are SETTLE_SECONDS old, and would leave it as events
        yesterday = layout.partition(SITE, day_number(today) - 1)
        compact_partition(layout, SITE, yesterday)
        compaction = compact(
            layout,
            before=today,
            progress=progress_bar("  compacting", "days"),
            pairs_progress=progress_bar("  pairs", "days"),
        )
        compact_partition(layout, SITE, layout.partition(SITE, day_number(today)))
        write_batch(last_hour, layout, f"{new_writer_id()}-00000000")
        manifest = wanted | {
            "generation": dataclasses.asdict(report),
            "compaction": dataclasses.asdict(compaction),
            "event_files": sorted(
                str(path.relative_to(directory)) for path in event_files(directory)
            ),
        }
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    files = list((directory / "events").glob("**/*.parquet"))
    generation = manifest["generation"]
    return {
        **wanted,
        "path": str(directory),
        "cached": cached,
        "parquet_files": len(files),
        "parquet_bytes": sum(file.stat().st_size for file in files),
        "generation_s": generation["seconds"],
        "generation_events_per_s": events / generation["seconds"],
    }


# --- one size --------------------------------------------------------------------------


def run_size(
    label: str, events: int, args: argparse.Namespace, today: dt.date, pool: ThreadPoolExecutor
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate (or reuse) the data, serve it, measure every case; (size record, rows)."""
    data = prepare_dataset(events, args, today)
    progress(
        f"  {data['parquet_files']} Parquet files, {data['parquet_bytes'] / 1e6:,.1f} MB; "
        f"generation took {data['generation_s']:.1f} s "
        f"({data['generation_events_per_s']:,.0f} events/s)"
    )
    generated = event_files(Path(data["path"]))
    workdir = Path(tempfile.mkdtemp(prefix="mallard-bench-query-", dir=args.data_root))
    server = Server(server_target(args), workdir)
    server.data_dir = Path(data["path"])
    url = server.start()
    assert server.process is not None
    sampler = RssSampler(server.process.pid)
    sampler.start()
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    progress(f"  server listening on {url}")
    records = []
    ingestion = None
    try:
        with duckdb.connect() as connection:
            context = Context(
                label,
                (host, int(port)),
                connection,
                str(Path(data["path"]) / "events" / "**" / "*.parquet"),
                today,
                args.repeat,
                pool,
            )
            for period in RANGES:
                for case in CASES:
                    record = measure(case, period, context)
                    records.append(record)
                    progress(
                        f"  {label} {period:>3} {case.name:<10} HTTP "
                        f"{record['http_median_ms']:9.1f} ms, naive "
                        f"{record['naive_median_ms']:9.1f} ms, {record['check']}"
                    )
            if args.ingest_seconds:
                progress(f"  ingestion at {args.ingest_rate:g} req/s, idle and under queries")
                ingestion = ingest_under_queries(url, context, args)
                progress(
                    f"  ingestion p99 idle {_p99s(ingestion['idle'])} ms, under dashboards "
                    f"{_p99s(ingestion['busy'])} ms: medians {ingestion['p99_ratio']:.2f}x "
                    f"({ingestion['queries_during']} queries); one query at a time "
                    f"{_p99s(ingestion['single'])} ms: {ingestion['single_p99_ratio']:.2f}x "
                    f"({ingestion['queries_single']} queries); the machine's fsync p99 "
                    f"{_probe_p99s(ingestion, 'fsync_ms')} ms, wake-up lateness p99 "
                    f"{_probe_p99s(ingestion, 'wakeup_late_ms')} ms"
                )
        sampler.sample()
        server.stop()
    finally:
        sampler.stop()
        server.kill()
        remove_ingested(Path(data["path"]), generated)
    problem_count, problem_lines = server.problems()
    if problem_count:
        progress(f"  server log has {problem_count} warning/error lines, e.g. {problem_lines[0]}")
    if not args.keep_data:
        shutil.rmtree(workdir, ignore_errors=True)
    size = {
        "size": label,
        "dataset": data,
        "rss_start_mib": round(sampler.start_mib, 1),
        "rss_peak_mib": round(sampler.peak_mib, 1),
        "ingestion": ingestion,
        "shutdown_s": server.shutdown_seconds,
        "exit_code": server.exit_code,
        "log_problem_count": problem_count,
        "log_problems": problem_lines,
        "server_log": str(server.log_path) if args.keep_data else None,
    }
    progress(
        f"  server RSS {size['rss_start_mib']:.0f} MiB after start, peak "
        f"{size['rss_peak_mib']:.0f} MiB; exit code {server.exit_code}"
    )
    return size, records


# --- output ----------------------------------------------------------------------------

COLUMNS = (
    ("size", "<"),
    ("range", "<"),
    ("query", "<"),
    ("HTTP median ms", ">"),
    ("HTTP p90 ms", ">"),
    ("naive median ms", ">"),
    ("naive/HTTP", ">"),
    ("check", "<"),
)


def table_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            record["size"],
            record["range"],
            record["query"],
            f"{record['http_median_ms']:,.1f}",
            f"{record['http_p90_ms']:,.1f}",
            f"{record['naive_median_ms']:,.1f}",
            f"{record['ratio']:.2f}x",
            record["check"],
        ]
        for record in records
    ]


def format_table(records: list[dict[str, Any]]) -> str:
    rows = table_rows(records)
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, (name, _) in enumerate(COLUMNS)]
    lines = [[name for name, _ in COLUMNS], ["-" * width for width in widths], *rows]
    return "\n".join(
        " ".join(
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(line, COLUMNS, widths, strict=True)
        ).rstrip()
        for line in lines
    )


def format_markdown(records: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join("---" if align == "<" else "--:" for _, align in COLUMNS) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(records)]
    return "\n".join(lines)


def summary_lines(sizes: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[str]:
    """Per size: RSS and dashboard totals; the main-metrics check; the largest dataset."""
    lines = []
    for size in sizes:
        dashboards = ", ".join(
            f"{r['range']} {r['http_median_ms']:,.0f} ms (naive {r['naive_median_ms']:,.0f} ms)"
            for r in records
            if r["size"] == size["size"] and r["query"] == "dashboard"
        )
        lines.append(
            f"{size['size']}: server peak RSS {size['rss_peak_mib']:,.0f} MiB "
            f"({size['rss_start_mib']:,.0f} after start); dashboard, 10 requests at once: "
            f"{dashboards}"
        )
        if size["ingestion"]:
            ingestion = size["ingestion"]
            lines.append(
                f"{size['size']}: ingestion at {ingestion['rate']:g} req/s, median of "
                f"{len(ingestion['idle'])} rounds, p50/p99 idle {ingestion['idle_p50_ms']:.1f}/"
                f"{ingestion['idle_p99_ms']:.1f} ms, under {ingestion['queries_during']} dashboard "
                f"queries {ingestion['busy_p50_ms']:.1f}/{ingestion['busy_p99_ms']:.1f} ms: p99 "
                f"{ingestion['p99_ratio']:.2f}x idle (p99 per round: idle "
                f"{_p99s(ingestion['idle'])}, busy {_p99s(ingestion['busy'])}); "
                f"errors {ingestion['errors']}"
            )
            lines.append(
                f"{size['size']}: ingestion while one heavy query runs at a time "
                f"({ingestion['queries_single']} all-time dashboard queries in turn): p50/p99 "
                f"{ingestion['single_p50_ms']:.1f}/{ingestion['single_p99_ms']:.1f} ms, p99 "
                f"{ingestion['single_p99_ratio']:.2f}x idle (p99 per round: "
                f"{_p99s(ingestion['single'])})"
            )
            lines.append(
                f"{size['size']}: the machine without Mallard (fsync_probe, medians): fsync p99 "
                f"{ingestion['fsync_ms_p99_idle']:.2f} ms idle, "
                f"{ingestion['fsync_ms_p99_busy']:.2f} ms under the queries "
                f"({ingestion['fsync_ms_p99_busy'] / ingestion['fsync_ms_p99_idle']:.1f}x); "
                f"sleeps wake up late by {ingestion['wakeup_late_ms_p99_idle']:.2f} / "
                f"{ingestion['wakeup_late_ms_p99_busy']:.2f} ms at p99"
            )
    for record in records:
        if record["query"] == "main" and "http_rows" in record:
            http_visitors, _, http_views = record["http_rows"][0]
            naive_visitors, _, naive_views = record["naive_rows"][0]
            same = http_visitors == naive_visitors and http_views == naive_views
            lines.append(
                f"main metrics {record['size']} {record['range']}: visitors HTTP "
                f"{http_visitors:,} / naive {naive_visitors:,}, pageviews HTTP {http_views:,} / "
                f"naive {naive_views:,}: {'OK' if same else 'MISMATCH'}"
            )
    data = sizes[-1]["dataset"]
    lines.append(
        f"largest dataset ({sizes[-1]['size']}): {data['events']:,} events, "
        f"{data['parquet_files']:,} Parquet files, {data['parquet_bytes'] / 1e6:,.1f} MB on "
        f"disk, generated in {data['generation_s']:.1f} s "
        f"({data['generation_events_per_s']:,.0f} events/s)"
        + (" in an earlier run" if data["cached"] else "")
    )
    return lines


def write_chart(records: list[dict[str, Any]], size: str, path: Path) -> bool:
    """Grouped bars, HTTP vs naive median per query, for one size; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, panels = plt.subplots(1, len(RANGES), figsize=(17, 5), sharey=True, squeeze=False)
    for axes, period in zip(panels[0], RANGES, strict=True):
        chosen = [r for r in records if r["size"] == size and r["range"] == period]
        xs = range(len(chosen))
        for offset, key, label in (
            (-0.2, "http_median_ms", "Mallard over HTTP"),
            (0.2, "naive_median_ms", "naive SQL, in-process DuckDB"),
        ):
            bars = axes.bar([x + offset for x in xs], [r[key] for r in chosen], 0.4, label=label)
            axes.bar_label(bars, fmt="%.0f", fontsize=7)
        axes.set_xticks(list(xs), [r["query"] for r in chosen], rotation=30)
        axes.set_yscale("log")
        axes.set_title(f"{size} events, range {period}")
    panels[0][0].set_ylabel("median ms (log scale)")
    panels[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# --- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, default="10k,1m,10m", help="events per dataset (%(default)s)"
    )
    parser.add_argument("--days", type=int, default=90, help="days of traffic, ending today")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs after one warm-up")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mallard-bench-query",
        help="where datasets are cached (default: %(default)s)",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep each server's log")
    parser.add_argument(
        "--ingest-seconds", type=float, default=10.0,
        help="seconds per ingestion run, idle and under queries (0: skip the phase)",
    )  # fmt: skip
    parser.add_argument("--ingest-rate", type=float, default=300.0, help="events/s in that phase")
    parser.add_argument(
        "--ingest-rounds", type=int, default=3, help="idle/under-queries pairs (median)"
    )
    parser.add_argument(
        "--server-env", type=parse_setting, action="append", default=[], metavar="NAME=VALUE",
        help="add to the server's environment, e.g. MALLARD_DURABILITY=memory (repeatable)",
    )  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    if args.days < 1 or args.repeat < 1 or args.ingest_rounds < 1:
        parser.error("--days, --repeat and --ingest-rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data_root.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    today = started.date()
    machine = machine_info()
    commit = git_describe(REPO)
    progress(
        f"sizes {', '.join(label for label, _ in args.sizes)}, {args.days} days to {today}, "
        f"{args.repeat} runs + 1 warm-up each; nproc {machine['nproc']}; mallard {commit}; "
        f"data under {args.data_root} ({filesystem_of(args.data_root)})"
        + "".join(f"; server {name}={value}" for name, value in args.server_env)
    )
    sizes: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=len(DASHBOARD)) as pool:
        for step, (label, events) in enumerate(args.sizes, start=1):
            progress(f"[{step}/{len(args.sizes)}] {label}: {events:,} events")
            try:
                size, rows = run_size(label, events, args, today, pool)
            except RuntimeError as error:
                progress(f"  FAILED: {error}")
                return 2
            sizes.append(size)
            records += rows

    print()
    print(format_table(records))
    print()
    for line in summary_lines(sizes, records):
        print(line)
    failures = [r for r in records if r["check"] not in ("OK", "-")]
    for record in failures:
        detail = ", ".join(f"{n}x {what}" for what, n in record.get("failures", {}).items())
        print(
            f"{record['size']} {record['range']} {record['query']}: {record['check']}"
            + (f" ({detail}), e.g. {record['error']}" if detail else "")
        )
    bad_exits = [size for size in sizes if size["exit_code"] != 0]
    for size in bad_exits:
        print(f"{size['size']}: server exit code {size['exit_code']} after SIGTERM")

    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"query-{started:%Y%m%dT%H%M%SZ}.json"
    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "sizes": dict(args.sizes),
            "days": args.days,
            "end": today.isoformat(),
            "site": SITE,
            "seed": args.seed,
            "repeat": args.repeat,
            "server_commit": commit,
            "server_env": dict(server_target(args).env),
            "data_root": str(args.data_root),
            "data_filesystem": filesystem_of(args.data_root),
        },
        "naive_sql": {name: (EVENTS + sql) for name, sql in NAIVE.items()},
        "sizes": sizes,
        "measurements": records,
        "table_markdown": format_markdown(records),
    }
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nresults: {json_path}")
    if not args.no_chart:
        chart = json_path.with_suffix(".png")
        if write_chart(records, sizes[-1]["size"], chart):
            print(f"chart:   {chart}")
    return 1 if failures or bad_exits else 0


if __name__ == "__main__":
    sys.exit(main())
