"""The query engine against an independent plain-Python reference, on generated traffic.

Realistic synthetic data (visits across midnight, bounces, funnels, revenue,
returning visitors) is written as Parquet, read back as events for
:mod:`tests.reference_stats`, and every answer of the DuckDB engine must equal
the reference's, metric for metric.
"""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from mallard.query import behaviour, funnels
from mallard.query.engine import QueryEngine
from mallard.query.model import Query, days_range, parse_query
from mallard.query.stats import run_query
from mallard.storage.compaction import compact
from mallard.storage.layout import DataLayout, day_number
from mallard.storage.parquet import write_batch
from mallard.storage.schema import Event, events_to_table
from mallard.synthetic import generate
from tests import reference_stats as ref
from tests.factories import DAY_US, stored_events

SITE = "ref.example"
END = dt.date(2026, 1, 20)
FIRST = END - dt.timedelta(days=13)
ALL_METRICS = [
    "visitors", "visits", "pageviews", "events", "views_per_visit", "bounce_rate",
    "visit_duration", "total_revenue", "average_revenue",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataLayout, list[Event]]:
    root = tmp_path_factory.mktemp("reference")
    generate(root, events=15_000, days=14, sites=[SITE], end=END, seed=7)
    layout = DataLayout(root)
    return layout, stored_events(layout.events)


@pytest.fixture(scope="module")
def compacted(data: tuple[DataLayout, list[Event]], tmp_path_factory: Any) -> DataLayout:
    """The same events, most days compacted with visit rollups, the last days as flushed."""
    root = tmp_path_factory.mktemp("compacted") / "data"
    shutil.copytree(data[0].root, root)
    layout = DataLayout(root)
    report = compact(layout, before=END - dt.timedelta(days=2))
    assert report.partitions == 11 and any(layout.visits.rglob("*.parquet"))
    return layout


SPLIT_US = 18 * 3_600_000_000  # the part of each day compacted before newer events came


@pytest.fixture(scope="module")
def partly_compacted(
    data: tuple[DataLayout, list[Event]], tmp_path_factory: Any
) -> tuple[DataLayout, list[Event]]:
    """The same events, every day compacted up to 18:00 UTC and the rest flushed since,
    except on the last day: accepted, not flushed (returned)."""
    layout = DataLayout(tmp_path_factory.mktemp("partly") / "data")
    layout.create()
    last_day = day_number(END) * DAY_US
    early = [e for e in data[1] if e.timestamp % DAY_US < SPLIT_US]
    later = [e for e in data[1] if e.timestamp % DAY_US >= SPLIT_US and e.timestamp < last_day]
    write_batch(events_to_table(early), layout, "20260101T000000-1-aaaaaaaa-00000000")
    compact(layout, before=END + dt.timedelta(days=1))
    write_batch(events_to_table(later), layout, "20260101T000000-1-aaaaaaaa-00000001")
    return layout, [e for e in data[1] if e.timestamp >= last_day + SPLIT_US]


@pytest.fixture(params=["events", "rollups", "partial rollups"])
def engine(request: Any, data: tuple[DataLayout, list[Event]]) -> QueryEngine:
    """Every comparison runs three times: visits rebuilt from events, read from rollups,
    and read from rollups of days with newer events and unflushed ones."""
    if request.param == "events":
        return QueryEngine(data[0])
    if request.param == "rollups":
        return QueryEngine(request.getfixturevalue("compacted"))
    layout, unflushed = request.getfixturevalue("partly_compacted")
    batch = events_to_table(unflushed)
    return QueryEngine(
        layout, pending=lambda: [("20260101T000000-1-aaaaaaaa-00000002", lambda _: batch)]
    )


def plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def bounds(query: Query) -> dict[str, int]:
    return {
        "start_us": int(query.date_range.start.timestamp() * 1_000_000),
        "end_us": int(query.date_range.end.timestamp() * 1_000_000),
    }


async def ask(engine: QueryEngine, **body: Any) -> tuple[Query, dict[str, Any]]:
    query = parse_query({"site_id": SITE, **body}, today=END)
    return query, await run_query(engine, query)


RANGES = [
    ([FIRST.isoformat(), END.isoformat()], "UTC"),
    ([(END - dt.timedelta(days=6)).isoformat(), END.isoformat()], "UTC"),
    ([(END - dt.timedelta(days=6)).isoformat(), END.isoformat()], "America/New_York"),
    ([END.isoformat(), END.isoformat()], "Asia/Kolkata"),
]


@pytest.mark.parametrize(("date_range", "timezone"), RANGES)
async def test_aggregates(engine: QueryEngine, data: Any, date_range: list[str], timezone: str):
    query, answer = await ask(engine, metrics=ALL_METRICS, date_range=date_range, timezone=timezone)
    expected = ref.aggregate(data[1], ALL_METRICS, **bounds(query))
    assert answer["results"][0]["metrics"] == [plain(expected[m]) for m in ALL_METRICS]


FILTERS = [
    [["is", "visit:source", ["Google"]]],
    [["contains", "event:page", ["/blog"]]],
    [["is_not", "visit:country", ["US"]], ["is", "visit:device", ["Mobile"]]],
    [["is", "event:goal", ["signup"]]],
    [["contains", "visit:entry_page", ["PRICING"], {"case_sensitive": False}]],
]


@pytest.mark.parametrize("filters", FILTERS)
async def test_filtered_aggregates(engine: QueryEngine, data: Any, filters: list[Any]) -> None:
    metrics = [*ALL_METRICS]
    if any(f[1] == "event:goal" for f in filters):
        metrics.append("conversion_rate")
    query, answer = await ask(
        engine, metrics=metrics, date_range=[FIRST.isoformat(), END.isoformat()], filters=filters
    )
    expected = ref.aggregate(data[1], metrics, filters=filters, **bounds(query))
    assert answer["results"][0]["metrics"] == [plain(expected[m]) for m in metrics]


BREAKDOWNS = [
    ("event:page", ["visitors", "pageviews", "visits", "bounce_rate"]),
    ("visit:entry_page", ["visits", "visitors", "bounce_rate", "visit_duration"]),
    ("visit:exit_page", ["visits", "visitors"]),
    ("visit:source", ["visitors", "visits", "bounce_rate", "visit_duration", "views_per_visit"]),
    ("visit:country", ["visitors", "pageviews"]),
    ("visit:device", ["visitors", "visits"]),
    ("visit:browser", ["visitors", "events"]),
    ("event:name", ["visitors", "events", "total_revenue", "conversion_rate"]),
]


@pytest.mark.parametrize(("dimension", "metrics"), BREAKDOWNS, ids=[b[0] for b in BREAKDOWNS])
async def test_breakdowns(engine: QueryEngine, data: Any, dimension: str, metrics: list[str]):
    query, answer = await ask(engine, metrics=metrics, date_range="7d", dimensions=[dimension])
    expected = ref.breakdown(data[1], dimension, metrics, **bounds(query))
    got = [(row["dimensions"][0], row["metrics"]) for row in answer["results"]]
    assert got == [(value, [plain(m[name]) for name in metrics]) for value, m in expected]


@pytest.mark.parametrize(("date_range", "timezone"), RANGES)
@pytest.mark.parametrize("dimension", ["event:page", "event:name"])
async def test_visitors_per_page_and_name(
    engine: QueryEngine, data: Any, dimension: str, date_range: list[str], timezone: str
) -> None:
    """From the per-day pairs where a day has them (see test_pairs.py), else from events."""
    metrics = ["visitors", "pageviews", "events", "total_revenue", "average_revenue"]
    query, answer = await ask(
        engine, metrics=metrics, date_range=date_range, timezone=timezone, dimensions=[dimension]
    )
    expected = ref.breakdown(data[1], dimension, metrics, **bounds(query))
    got = [(row["dimensions"][0], row["metrics"]) for row in answer["results"]]
    assert got == [(value, [plain(m[name]) for name in metrics]) for value, m in expected]


@pytest.mark.parametrize("dimension", ["visit:device", "visit:source", "event:page"])
async def test_percentage_is_of_all_visitors(engine: QueryEngine, data: Any, dimension: str):
    metrics = ["visitors", "percentage", "visits"]
    query, answer = await ask(engine, metrics=metrics, date_range="7d", dimensions=[dimension])
    total = ref.aggregate(data[1], ["visitors"], **bounds(query))["visitors"]

    def share(visitors: int) -> float:
        return float(ref.round_half_up(Fraction(100 * visitors, total), 2))

    got = [(row["dimensions"][0], row["metrics"][:2]) for row in answer["results"]]
    expected = ref.breakdown(data[1], dimension, ["visitors"], **bounds(query))
    assert got == [(value, [m["visitors"], share(m["visitors"])]) for value, m in expected]


@pytest.mark.parametrize(
    ("interval", "timezone", "days"),
    [
        ("day", "UTC", 14),
        ("day", "Europe/Berlin", 14),
        ("hour", "America/New_York", 1),
        # whole UTC days per bucket: from the visit rollups' seen_* columns
        ("day", "Europe/London", 14),  # UTC+0 in January
        ("week", "UTC", 14),
        ("week", "UTC", 10),  # from a Sunday: some visitors came before the range
        ("month", "UTC", 14),
    ],
)
async def test_timeseries(engine: QueryEngine, data: Any, interval: str, timezone: str, days: int):
    metrics = ["visitors", "visits", "pageviews", "bounce_rate"]
    first = END - dt.timedelta(days=days - 1)
    _, answer = await ask(
        engine,
        metrics=metrics,
        date_range=[first.isoformat(), END.isoformat()],
        dimensions=[f"time:{interval}"],
        timezone=timezone,
    )
    expected = ref.timeseries(data[1], interval, timezone, first, END, metrics)
    got = [(row["dimensions"][0], row["metrics"]) for row in answer["results"]]
    assert got == [(label, [plain(m[name]) for name in metrics]) for label, m in expected]


@pytest.mark.parametrize(
    ("window", "text", "timezone"),
    [
        (600, "page:/,page:/pricing,page:/signup,event:signup", "UTC"),
        (1800, "page:/,page:/pricing,page:/signup,event:signup", "UTC"),
        (86_400, "page:/,page:/pricing,page:/signup,event:signup", "UTC"),
        (86_400, "page:/,page:/pricing,page:/signup,event:signup", "America/New_York"),
        (1800, "page:/,page:/,event:pageview,page:/pricing", "UTC"),  # a step's event matches
        (7 * 86_400, "page:/blog*,page:/pricing,event:signup,page:/*", "Asia/Kolkata"),
    ],
)
@pytest.mark.parametrize("count", [funnels.count_with_sql, funnels.count_from_steps])
async def test_funnel(
    engine: QueryEngine, data: Any, window: int, text: str, timezone: str, count: Any
) -> None:
    steps = funnels.parse_steps(text)
    query = parse_query(
        {
            "site_id": SITE,
            "metrics": ["visitors"],
            "date_range": [FIRST.isoformat(), END.isoformat()],
            "timezone": timezone,
        },
        today=END,
    )
    expected = ref.funnel(data[1], [(s.kind, s.value) for s in steps], window, **bounds(query))
    got = funnels.funnel_result(steps, await count(engine, query, steps, window))
    assert [s["visitors"] for s in got] == [s["visitors"] for s in expected]
    assert [s["conversion_rate"] for s in got] == [s["conversion_rate"] for s in expected]
    assert got[0]["visitors"] > got[-1]["visitors"] > 0  # the data has a real funnel


@pytest.mark.parametrize(
    ("period", "timezone", "days", "filters"),
    [
        ("week", "UTC", 14, []),
        ("day", "Europe/Berlin", 14, []),
        ("month", "America/New_York", 14, []),
        ("day", "UTC", 100, []),  # more days than a BIGINT's bits
        ("day", "UTC", 200, []),  # more days than bits in a number: distinct (visitor, day)
        ("week", "UTC", 14, [["contains", "event:page", ["/blog"]]]),  # from events
        ("day", "Asia/Kolkata", 200, [["is", "event:goal", ["signup"]]]),
    ],
)
async def test_retention(
    engine: QueryEngine, data: Any, period: str, timezone: str, days: int, filters: list[Any]
) -> None:
    first = END - dt.timedelta(days=days - 1)
    query = parse_query(
        {"site_id": SITE, "metrics": ["visitors"], "timezone": timezone, "filters": filters,
         "date_range": [first.isoformat(), END.isoformat()]},
        today=END,
    )  # fmt: skip
    statement = behaviour.retention_sql(query, period)
    # without event filters, activity comes from visits
    assert statement.derived == (None if filters else "visits")
    assert ("masks AS" in statement.sql) == (days <= behaviour.MASK_PERIODS)
    _, rows = await engine.fetch(
        statement.sql,
        statement.parameters,
        derived=statement.derived,
        site_id=SITE,
        start=query.date_range.start,
        end=query.date_range.end,
    )
    expected = ref.retention(data[1], period, timezone, filters=filters, **bounds(query))
    assert behaviour.retention_result(rows) == expected
    if period == "week":  # the data spans two weeks
        assert any(p["visitors"] for c in expected for p in c["periods"][1:])  # people came back


async def test_partial_rollups_are_read(partly_compacted: tuple[DataLayout, list[Event]]):
    """Every day of the "partial rollups" engine has a rollup and newer events beside it."""
    layout, unflushed = partly_compacted
    batch = events_to_table(unflushed)
    engine = QueryEngine(layout, pending=lambda: [("w-00000009", lambda _: batch)])
    range_ = days_range(FIRST, END, "UTC")
    snapshot, pending = engine._view(
        SITE, range_.start, range_.end, engine._pending(), derived="visits"
    )
    assert len(snapshot.rolled) == 14 and snapshot.partial == set(snapshot.rolled)
    assert pending.num_rows == len(unflushed) > 0


def test_reference_data_has_what_the_comparison_needs(data: Any) -> None:
    visits = ref.sessions(data[1])
    assert any(v.is_bounce for v in visits) and any(not v.is_bounce for v in visits)
    day = 86_400_000_000
    assert all(v.start_us // day == v.end_us // day for v in visits)
    assert any(  # activity across midnight, which the reference splits there
        a.visitor_id == b.visitor_id
        and a.timestamp // day != b.timestamp // day
        and b.timestamp - a.timestamp <= ref.VISIT_TIMEOUT_S * 1_000_000
        for a, b in itertools.pairwise(sorted(data[1], key=lambda e: (e.visitor_id, e.timestamp)))
    ), "no visitor is active across midnight"
    assert any(e.revenue_amount for e in data[1])
    assert days_range(FIRST, END, "UTC").first_day == FIRST
