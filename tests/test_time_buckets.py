"""Time buckets across DST changes and odd offsets, against the plain-Python reference.

The engine buckets time by integer arithmetic on epoch microseconds plus the zone's
offset at each instant (see :func:`mallard.query.sql.time_bucket`); these cases put
events on both sides of real transitions.
"""

from __future__ import annotations

import collections
import datetime as dt
import zoneinfo
from pathlib import Path

import duckdb
import pytest

from mallard.query import behaviour
from mallard.query.engine import QueryEngine
from mallard.query.model import parse_query
from mallard.query.sql import derived_data
from mallard.query.stats import run_query
from mallard.query.zones import utc_offset_sql, utc_offsets
from mallard.storage.compaction import compact
from mallard.storage.layout import DataLayout
from mallard.storage.parquet import write_batch
from mallard.storage.schema import events_to_table
from tests import reference_stats as ref
from tests.factories import make_event

SITE = "example.com"
HOUR_US = 3_600_000_000
ONE_DAY = dt.timedelta(days=1)
# (zone, a local day with a transition or an odd offset)
CASES = [
    ("Europe/Berlin", dt.date(2026, 3, 29)),  # 02:00 -> 03:00
    ("America/New_York", dt.date(2026, 11, 1)),  # 02:00 -> 01:00, an hour twice
    ("Australia/Lord_Howe", dt.date(2026, 4, 5)),  # half-hour DST ends
    ("Asia/Kathmandu", dt.date(2026, 3, 1)),  # UTC+05:45
    # a month's first day where the system's zone data (UTC+1) and DuckDB's (UTC+0)
    # disagree: the range, labels and buckets must all follow the same rules
    ("Africa/Casablanca", dt.date(2026, 11, 1)),
    ("America/Vancouver", dt.date(2026, 12, 1)),
]


def test_offsets_change_at_the_transition() -> None:
    start = dt.datetime(2026, 3, 28, tzinfo=dt.UTC)
    pieces = utc_offsets("Europe/Berlin", start, start + dt.timedelta(days=3))
    transition = dt.datetime(2026, 3, 29, 1, tzinfo=dt.UTC)
    assert pieces == (
        (int(start.timestamp() * 1e6), HOUR_US),
        (int(transition.timestamp() * 1e6), 2 * HOUR_US),
    )
    assert len(utc_offsets("UTC", start, start + dt.timedelta(days=400))) == 1


@pytest.mark.parametrize(
    "zone", ["Europe/Berlin", "Africa/Casablanca", "America/Vancouver", "Asia/Kathmandu", "UTC"]
)
def test_offsets_in_sql_are_the_system_zone_data_over_any_range(zone: str) -> None:
    """A binary search over every change of offset from 1970 to 2100, the same offsets as
    Python's at instants a few hours either side of each."""
    start, end = dt.datetime(1969, 12, 31, tzinfo=dt.UTC), dt.datetime(2100, 1, 2, tzinfo=dt.UTC)
    moments = [start, end - dt.timedelta(microseconds=1)]
    for from_us, _ in utc_offsets(zone, start, end)[1:]:
        change = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=from_us)
        moments += [change + dt.timedelta(hours=hours) for hours in (-5, -1, 0, 1, 5)]
    expected = [
        m.astimezone(zoneinfo.ZoneInfo(zone)).utcoffset() // dt.timedelta(microseconds=1)
        for m in moments
    ]
    at = "CAST(moment AS TIMESTAMPTZ)"
    got = (
        duckdb.connect()
        .execute(
            f"SELECT {utc_offset_sql(zone, start, end, at)} FROM (SELECT unnest($moments) AS "
            "moment, generate_subscripts($moments, 1) AS i) ORDER BY i",
            {"moments": moments},
        )
        .fetchall()
    )
    assert [offset for (offset,) in got] == expected


@pytest.mark.parametrize(("zone", "day"), CASES, ids=[zone for zone, _ in CASES])
@pytest.mark.parametrize(
    ("interval", "centuries"),
    [("hour", False), ("day", False), ("week", False), ("month", False),
     ("week", True), ("month", True)],
    ids=["hour", "day", "week", "month", "weeks-over-decades", "months-over-decades"],
)  # fmt: skip
async def test_buckets_match_the_reference(
    tmp_path: Path, zone: str, day: dt.date, interval: str, centuries: bool
) -> None:
    """Over three days, or the same events in a range of 130 years (with every change
    of the zone's offset from 1970 to 2099): the same buckets."""
    first, last = day - dt.timedelta(days=1), day + dt.timedelta(days=1)
    start = int(dt.datetime.combine(first, dt.time(), dt.UTC).timestamp() * 1e6) - 14 * HOUR_US
    events = [  # every 20 minutes for four days, three visitors taking turns, gaps included
        make_event(site_id=SITE, visitor_id=i % 3, timestamp=start + i * 20 * 60_000_000,
                   pathname=f"/{i % 5}")
        for i in range(4 * 72) if i % 11
    ]  # fmt: skip
    layout = DataLayout(tmp_path / "data")
    layout.create()
    write_batch(events_to_table(events), layout, "buckets")
    query = parse_query(
        {
            "site_id": SITE,
            "metrics": ["visitors", "visits", "pageviews"],
            "dimensions": [f"time:{interval}"],
            "date_range": ["1970-01-01", "2099-12-31"]
            if centuries
            else [first.isoformat(), last.isoformat()],
            "timezone": zone,
            "include": {"time_labels": not centuries},
        }
    )
    answer = await run_query(QueryEngine(layout), query)
    got = {tuple(row["dimensions"]): row["metrics"] for row in answer["results"]}
    metrics = ["visitors", "visits", "pageviews"]
    if centuries:  # every bucket, most of them zeros; all the events are in the range
        busy = {labels: numbers for labels, numbers in got.items() if any(numbers)}
        everything = ref.timeseries(
            events, interval, zone, first - ONE_DAY, last + ONE_DAY * 2, metrics
        )
        assert busy == {(label,): list(m.values()) for label, m in everything if m["pageviews"]}
        return
    expected = ref.timeseries(events, interval, zone, first, last, metrics)
    assert answer["meta"]["time_labels"] == [label for label, _ in expected]
    assert got == {(label,): list(m.values()) for label, m in expected}  # gaps are zeros


@pytest.mark.parametrize("interval", ["hour", "day", "week"])
@pytest.mark.parametrize("zone", ["UTC", "America/St_Johns", "America/Vancouver"])
async def test_local_times_before_1970_fall_in_their_own_buckets(
    tmp_path: Path, zone: str, interval: str
) -> None:
    """DuckDB's // rounds toward zero, not down: 1970-01-01 to 01-04 (days 0-3) once fell
    into the week from 01-05, and a range from 1970-01-01T00:00Z west of UTC, which
    starts on 1969-12-31 local, into the next hour or day."""
    start = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    moments = [start + dt.timedelta(minutes=37 * i) for i in range(10 * 24 * 60 // 37)]
    events = [
        make_event(site_id=SITE, visitor_id=i % 3, timestamp=int(m.timestamp() * 1e6))
        for i, m in enumerate(moments)
    ]
    layout = DataLayout(tmp_path / "data")
    layout.create()
    write_batch(events_to_table(events), layout, "early")
    end = start + dt.timedelta(days=10)
    query = parse_query(
        {"site_id": SITE, "metrics": ["pageviews"], "dimensions": [f"time:{interval}"],
         "date_range": [start.isoformat(), end.isoformat()], "timezone": zone}
    )  # fmt: skip
    answer = await run_query(QueryEngine(layout), query)
    got = {
        row["dimensions"][0]: row["metrics"][0] for row in answer["results"] if row["metrics"][0]
    }

    def label(moment: dt.datetime) -> str:
        local = moment.astimezone(zoneinfo.ZoneInfo(zone))
        if interval == "hour":
            return local.strftime("%Y-%m-%d %H:00:00")
        day = local.date()
        return str(day - dt.timedelta(days=day.weekday()) if interval == "week" else day)

    assert got == collections.Counter(label(moment) for moment in moments)


@pytest.mark.parametrize("interval", ["day", "week", "month"])
async def test_whole_utc_day_buckets_read_from_rollups_match_the_reference(
    tmp_path: Path, interval: str
) -> None:
    """At UTC+0, visitors per bucket come from the visit rollups' seen_* columns: across
    a month's end, with visitors returning within and across buckets and from before
    the range."""
    first, last = dt.date(2026, 1, 20), dt.date(2026, 2, 10)  # a Tuesday to a Tuesday
    start = int(dt.datetime(2026, 1, 15, tzinfo=dt.UTC).timestamp() * 1e6)
    events = [  # every 7 hours for 30 days, four visitors taking turns
        make_event(site_id=SITE, visitor_id=i % 4, timestamp=start + i * 7 * HOUR_US,
                   pathname=f"/{i % 5}")
        for i in range(30 * 24 // 7)
    ]  # fmt: skip
    layout = DataLayout(tmp_path / "data")
    layout.create()
    write_batch(events_to_table(events), layout, "buckets")
    compact(layout, before=dt.date(2026, 2, 20))
    metrics = ["visitors", "visits", "pageviews", "bounce_rate"]
    query = parse_query(
        {
            "site_id": SITE,
            "metrics": metrics,
            "dimensions": [f"time:{interval}"],
            "date_range": [first.isoformat(), last.isoformat()],
            "include": {"time_labels": True},
        }
    )
    assert derived_data(query) == "seen"
    answer = await run_query(QueryEngine(layout), query)
    got = {tuple(row["dimensions"]): row["metrics"] for row in answer["results"]}
    expected = ref.timeseries(events, interval, "UTC", first, last, metrics)
    assert answer["meta"]["time_labels"] == [label for label, _ in expected]
    assert got == {(label,): [m[name] for name in metrics] for label, m in expected}


def test_months_are_whole_utc_days_only_in_a_zone_always_at_utc() -> None:
    """Buckets of whole UTC days read the rollups' seen_* columns, over any range."""

    def derived(date_range: list[str], zone: str) -> str | None:
        body = {"site_id": SITE, "metrics": ["visitors"], "dimensions": ["time:month"]}
        return derived_data(parse_query({**body, "date_range": date_range, "timezone": zone}))

    assert derived(["2000-01-01", "2026-12-31"], "UTC") == "seen"
    assert derived(["1970-01-01", "2099-12-31"], "UTC") == "seen"
    assert derived(["2026-11-01", "2027-01-31"], "Europe/London") == "seen"  # winter time
    assert derived(["2026-11-01", "2027-04-30"], "Europe/London") != "seen"
    assert derived(["2000-01-01", "2026-12-31"], "Africa/Abidjan") == "seen"


@pytest.mark.parametrize("compacted", [False, True], ids=["events", "rollups"])
@pytest.mark.parametrize(
    ("period", "date_range"),
    [
        ("month", ["2026-11-01", "2026-12-31"]),
        ("day", ["1990-01-01", "2026-12-31"]),  # a distinct count per day, no bit masks
        ("week", ["1970-01-01", "2099-12-31"]),
    ],
)
async def test_retention_where_duckdb_and_the_system_disagree(
    tmp_path: Path, compacted: bool, period: str, date_range: list[str]
) -> None:
    """Casablanca is UTC+1 by the system's zone data, UTC+0 by DuckDB's: an event in
    the range's first local hour once fell into the month before the range (a
    500: a bit shifted by -1), or the month after it at the other end; over
    decades, DuckDB's rules bucketed every day."""
    zone = "Africa/Casablanca"
    start = int(dt.datetime(2026, 10, 31, 23, 30, tzinfo=dt.UTC).timestamp() * 1e6)
    events = [  # from the range's first local hour to past its last, every 10 hours
        make_event(site_id=SITE, visitor_id=i % 5, timestamp=start + i * 10 * HOUR_US)
        for i in range(2 * 30 * 24 // 10)
    ]
    layout = DataLayout(tmp_path / "data")
    layout.create()
    write_batch(events_to_table(events), layout, "buckets")
    if compacted:
        compact(layout, before=dt.date(2027, 1, 10))
    query = parse_query(
        {"site_id": SITE, "metrics": ["visitors"], "timezone": zone, "date_range": date_range}
    )
    statement = behaviour.retention_sql(query, period)
    _, rows = await QueryEngine(layout).fetch(
        statement.sql,
        statement.parameters,
        derived=statement.derived,
        site_id=SITE,
        start=query.date_range.start,
        end=query.date_range.end,
    )
    start_us, end_us = (
        int(t.timestamp() * 1e6) for t in (query.date_range.start, query.date_range.end)
    )
    expected = ref.retention(events, period, zone, start_us=start_us, end_us=end_us)
    assert expected[0]["cohort"] == ("2026-10-26" if period == "week" else "2026-11-01")
    assert behaviour.retention_result(rows) == expected
