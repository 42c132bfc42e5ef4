"""The synthetic traffic generator: exact counts, the documented layout, realistic visits."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from mallard import progress
from mallard.storage.layout import DataLayout
from mallard.storage.schema import EVENT_SCHEMA
from mallard.synthetic import GenerationReport, generate
from tests.conftest import parquet_files

END = dt.date(2024, 3, 31)
DAYS = 10
SITES = ["example.com", "shop.example.org"]
EVENTS = 30_000
PARTITION = re.compile(r"site_id=(?P<site>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")
COLUMN_TYPES = {
    "site_id": "VARCHAR", "visitor_id": "BIGINT", "timestamp": "TIMESTAMP WITH TIME ZONE",
    "event_name": "VARCHAR", "pathname": "VARCHAR", "hostname": "VARCHAR",
    "referrer": "VARCHAR", "referrer_source": "VARCHAR", "utm_source": "VARCHAR",
    "utm_medium": "VARCHAR", "utm_campaign": "VARCHAR", "utm_content": "VARCHAR",
    "utm_term": "VARCHAR", "browser": "VARCHAR", "browser_version": "VARCHAR", "os": "VARCHAR",
    "os_version": "VARCHAR", "device_type": "VARCHAR", "screen_width": "INTEGER",
    "country_code": "VARCHAR", "props": "VARCHAR", "revenue_amount": "DECIMAL(12,2)",
    "revenue_currency": "VARCHAR",
}  # fmt: skip
# Visits as an analytics query sees them: a visitor's events less than 30 minutes apart.
VISITS = """
    WITH gaps AS (
        SELECT *, coalesce(timestamp - lag(timestamp) OVER w >= INTERVAL 30 MINUTE, true) AS new
        FROM events WINDOW w AS (PARTITION BY site_id, visitor_id ORDER BY timestamp)
    ), numbered AS (
        SELECT *, sum(new::INT) OVER (PARTITION BY site_id, visitor_id ORDER BY timestamp) AS n
        FROM gaps
    )
    SELECT site_id, visitor_id, n, count(*) FILTER (event_name = 'pageview') AS views,
           min(date) AS first_date, max(date) AS last_date
    FROM numbered GROUP BY site_id, visitor_id, n
"""


def connect(data_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB session in UTC with the events as the interface documents them."""
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    glob = DataLayout(data_dir).events_glob
    connection.execute(
        f"CREATE VIEW events AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
    )
    return connection


def scalar(connection: duckdb.DuckDBPyConnection, query: str) -> object:
    row = connection.execute(query).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationReport]:
    data_dir = tmp_path_factory.mktemp("synthetic")
    return data_dir, generate(data_dir, events=EVENTS, days=DAYS, sites=SITES, end=END, seed=7)


@pytest.fixture(scope="module")
def db(run: tuple[Path, GenerationReport]) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(run[0])
    yield connection
    connection.close()


def test_report_and_exact_count(
    run: tuple[Path, GenerationReport], db: duckdb.DuckDBPyConnection
) -> None:
    data_dir, report = run
    assert scalar(db, "SELECT count(*) FROM events") == EVENTS
    files = parquet_files(data_dir)
    assert (report.events, report.files, report.sites, report.days) == (EVENTS, len(files), 2, 10)
    assert report.bytes == sum(path.stat().st_size for path in files)
    assert report.seconds > 0
    assert not list(DataLayout(data_dir).tmp.iterdir())  # nothing left aside


@pytest.mark.parametrize(("events", "days", "sites"), [(12_345, 3, 3), (5, 7, 1), (0, 2, 1)])
def test_exact_count_for_odd_sizes(tmp_path: Path, events: int, days: int, sites: int) -> None:
    names = [f"site{i}.test" for i in range(sites)]
    generate(tmp_path, events=events, days=days, sites=names, end=END)
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in parquet_files(tmp_path))
    assert rows == events


def test_documented_columns_and_schema(
    run: tuple[Path, GenerationReport], db: duckdb.DuckDBPyConnection
) -> None:
    relation = db.sql("SELECT * FROM events")
    types = {name: str(type_) for name, type_ in zip(relation.columns, relation.types, strict=True)}
    assert {name: types.get(name) for name in COLUMN_TYPES} == COLUMN_TYPES
    for path in parquet_files(run[0]):
        parquet = pq.ParquetFile(path)
        assert parquet.schema_arrow == EVENT_SCHEMA
        row_group = parquet.metadata.row_group(0)
        assert {row_group.column(i).compression for i in range(row_group.num_columns)} == {"ZSTD"}


def test_one_file_per_site_day_in_utc_partitions(
    run: tuple[Path, GenerationReport], db: duckdb.DuckDBPyConnection
) -> None:
    partitions = []
    for path in parquet_files(run[0]):
        match = PARTITION.search(path.as_posix())
        assert match, path
        partitions.append((match["site"], match["date"]))
    assert len(partitions) == len(set(partitions)) == len(SITES) * DAYS
    assert scalar(db, "SELECT count(*) FROM events WHERE date <> timestamp::DATE") == 0
    assert scalar(db, "SELECT count(*) FROM events WHERE hostname <> site_id") == 0


def test_days_span_as_asked(db: duckdb.DuckDBPyConnection) -> None:
    first, last, days = (
        db.execute(
            "SELECT min(timestamp::DATE), max(timestamp::DATE), count(DISTINCT date) FROM events"
        ).fetchone()
        or ()
    )
    assert (first, last, days) == (END - dt.timedelta(days=DAYS - 1), END, DAYS)


def test_deterministic_for_a_seed(tmp_path: Path, db: duckdb.DuckDBPyConnection) -> None:
    query = "SELECT * EXCLUDE (date) FROM events ORDER BY ALL"
    expected = db.execute(query).fetchall()
    generate(tmp_path / "same", events=EVENTS, days=DAYS, sites=SITES, end=END, seed=7)
    assert connect(tmp_path / "same").execute(query).fetchall() == expected
    generate(tmp_path / "other", events=EVENTS, days=DAYS, sites=SITES, end=END, seed=8)
    assert connect(tmp_path / "other").execute(query).fetchall() != expected


def test_bounces_and_multi_page_visits(db: duckdb.DuckDBPyConnection) -> None:
    visits, bounce_rate, longest = (
        db.execute(
            f"SELECT count(*), avg((views <= 1)::INT), max(views) FROM ({VISITS})"
        ).fetchone()
        or ()
    )
    assert visits > EVENTS / 5
    assert 0.35 < bounce_rate < 0.55
    assert longest >= 5


def test_returning_visitors_and_visits_over_midnight(db: duckdb.DuckDBPyConnection) -> None:
    returning = scalar(
        db,
        "SELECT count(*) FROM (SELECT site_id, visitor_id FROM events "
        "GROUP BY ALL HAVING count(DISTINCT date) > 1)",
    )
    visitors = scalar(db, "SELECT count(DISTINCT (site_id, visitor_id)) FROM events")
    assert 0.05 < returning / visitors < 0.5
    assert scalar(db, f"SELECT count(*) FROM ({VISITS}) WHERE first_date < last_date") > 0
    assert scalar(db, "SELECT count(*) FROM events WHERE visitor_id < 0") > 0  # signed int64


def test_custom_events_revenue_and_props(db: duckdb.DuckDBPyConnection) -> None:
    names = dict(db.execute("SELECT event_name, count(*) FROM events GROUP BY 1").fetchall())
    assert set(names) == {"pageview", "signup", "purchase", "download", "outbound"}
    assert names["pageview"] > 0.8 * EVENTS
    purchases = db.execute(
        "SELECT revenue_amount, revenue_currency FROM events WHERE event_name = 'purchase'"
    ).fetchall()
    assert purchases and {currency for _, currency in purchases} == {"USD", "EUR"}
    assert all(amount > 0 and amount.as_tuple().exponent == -2 for amount, _ in purchases)
    assert scalar(db, "SELECT count(revenue_amount) FROM events") == len(purchases)
    plans = {
        plan
        for (plan,) in db.execute(
            "SELECT json_extract_string(props, '$.plan') FROM events "
            "WHERE event_name IN ('signup', 'purchase')"
        ).fetchall()
    }
    assert plans == {"starter", "pro", "team"}
    assert scalar(db, "SELECT count(props) FROM events WHERE event_name = 'pageview'") == 0


def test_sources_devices_and_countries(db: duckdb.DuckDBPyConnection) -> None:
    sources = {
        row[0] for row in db.execute("SELECT DISTINCT referrer_source FROM events").fetchall()
    }
    named = {"Google", "Bing", "DuckDuckGo", "X / Twitter", "Reddit", "GitHub", "Hacker News"}
    assert {None, *named} <= sources
    assert scalar(db, "SELECT count(*) FROM events WHERE utm_campaign IS NOT NULL") > 0
    mismatched = scalar(
        db,
        "SELECT count(*) FROM events WHERE (device_type = 'Mobile') <> (screen_width < 576) "
        "OR (browser = 'Mobile Safari' AND os <> 'iOS') OR (os = 'Android' AND screen_width > 600)",
    )
    assert mismatched == 0
    top = scalar(db, "SELECT country_code FROM events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    assert top == "US"


def test_progress_is_regular_and_reaches_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    total = 20_000
    sites = ["example.com"]
    generate(tmp_path, events=total, days=1, sites=sites, progress=lambda *call: calls.append(call))
    assert calls[-1] == (total, total)
    done = [0] + [d for d, t in calls if t == total]
    assert len(done) == len(calls) + 1
    assert all(0 < b - a <= total // 50 for a, b in itertools.pairwise(done))


def test_rejects_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, events=10, days=0, sites=["example.com"])
    with pytest.raises(ValueError):
        generate(tmp_path, events=10, days=1, sites=[])


def test_progress_line_shows_slow_rates_and_time_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = iter([100.0, 104.0, 110.0])  # started, then each call
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    show = progress.progress_bar("pairs", "days")
    show(2, 10)
    show(10, 10)
    first, last = capsys.readouterr().err.split("\r")[1:]
    assert first.endswith("2/10 days, 0.5/s, 16 s left")
    assert last == f"pairs [{'#' * progress.BAR_WIDTH}] 100% 10/10 days, 1.0/s\n"
