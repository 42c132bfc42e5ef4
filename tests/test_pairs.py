"""Per-day (page or event name, visitor) pairs and the visit rollups' ``seen_*``
columns: built by compaction, read by queries.

Visitors per page and per event name come from the pairs of the days that
have current ones, visitors in total and per visit dimension from the
``seen_*`` columns of those days' visit rollups; these tests change the data
under them (a late file in an earlier day, an erasure, unflushed events, lost
pairs) and check every answer against the independent reference in between,
and that the pairs are used again once compaction has rebuilt them.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from mallard.query import funnels
from mallard.query.engine import QueryEngine
from mallard.query.model import Query, parse_query
from mallard.query.sql import aggregate_sql
from mallard.query.stats import run_query
from mallard.storage.compaction import compact
from mallard.storage.erasure import Tombstones, erase
from mallard.storage.layout import DataLayout, day_number, day_to_date
from mallard.storage.pairs import (
    VERSION,
    PairManifest,
    manifest_path,
    pair_file,
    read_manifest,
    refresh_pairs,
    rolled_pair_days,
    step_file,
)
from mallard.storage.parquet import write_batch
from mallard.storage.retention import expire
from mallard.storage.schema import Event, events_to_table, micros
from mallard.synthetic import generate
from tests import reference_stats as ref
from tests.factories import DAY_US, make_event, stored_events

SITE = "pairs.example"
END = dt.date(2026, 3, 10)
PAIR_METRICS = ["visitors", "pageviews", "events", "total_revenue"]
VISIT_METRICS = [
    "visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration",
    "events", "total_revenue",
]  # fmt: skip
DIMENSIONS = ["event:page", "event:name", "visit:source", "visit:entry_page", "visit:country", None]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs") / "data"
    generate(root, events=6_000, days=8, sites=[SITE], end=END, seed=11)
    return root


@pytest.fixture
def layout(generated: Path, tmp_path: Path) -> DataLayout:
    """The generated site, every day before END compacted (with pairs), END as flushed."""
    layout = DataLayout(tmp_path / "data")
    shutil.copytree(generated, layout.root)
    compact(layout, before=END)
    return layout


def query_for(dimension: str | None, date_range: Any, timezone: str = "UTC") -> Query:
    """Visitors and more per ``dimension`` (None: in total) over ``date_range``."""
    metrics = PAIR_METRICS if dimension and dimension.startswith("event:") else VISIT_METRICS
    body = {"site_id": SITE, "metrics": metrics, "dimensions": [dimension] if dimension else []}
    return parse_query({**body, "date_range": date_range, "timezone": timezone}, today=END)


FUNNEL = funnels.parse_steps("page:/,page:/pricing,page:/signup,event:signup")


async def assert_funnel_like_reference(
    engine: QueryEngine, events: list[Event], query: Query, *, rolled: int
) -> None:
    """The funnel from the funnel steps counts like the reference, with ``rolled`` days
    read from the steps."""
    bounds = {"start_us": micros(query.date_range.start), "end_us": micros(query.date_range.end)}
    for window in (1800, 86_400):
        expected = ref.funnel(events, [(s.kind, s.value) for s in FUNNEL], window, **bounds)
        counts = await funnels.count_from_steps(engine, query, FUNNEL, window)
        assert counts == [step["visitors"] for step in expected]
    assert counts[-1] > 0  # the data has a real funnel
    snapshot, _ = engine._view(
        SITE, query.date_range.start, query.date_range.end, engine._pending(), derived="steps"
    )
    assert len(snapshot.rolled) == rolled


async def assert_like_reference(
    engine: QueryEngine, events: list[Event], query: Query, *, rolled: int | None = None
) -> None:
    """Answers ``query`` like the reference; with ``rolled``, from that many days' pairs
    (or visit rollups with current ``seen_*`` columns)."""
    answer = await run_query(engine, query)
    bounds = {"start_us": micros(query.date_range.start), "end_us": micros(query.date_range.end)}
    metrics = query.metrics
    if query.dimensions:
        expected = ref.breakdown(events, query.dimensions[0], metrics, **bounds)
    else:
        expected = [("", ref.aggregate(events, metrics, **bounds))]
    got = [
        (row["dimensions"][0] if query.dimensions else "", row["metrics"])
        for row in answer["results"]
    ]
    assert got == [(value, [float(m[name]) for name in metrics]) for value, m in expected]
    derived = aggregate_sql(query).derived
    assert derived == ("pairs" if list(query.metrics) == PAIR_METRICS else "seen")
    if rolled is not None:
        snapshot, _ = engine._view(
            SITE, query.date_range.start, query.date_range.end, engine._pending(), derived=derived
        )
        assert len(snapshot.rolled) == rolled


RANGES = [  # (date range, timezone, whole days with pairs)
    ([(END - dt.timedelta(days=7)).isoformat(), END.isoformat()], "UTC", 7),
    ([(END - dt.timedelta(days=4)).isoformat(), END.isoformat()], "America/New_York", 3),
    (["2026-03-04T10:30:00", "2026-03-07T06:00:00"], "UTC", 2),
    ([END.isoformat(), END.isoformat()], "UTC", 0),
]


@pytest.mark.parametrize(("date_range", "timezone", "rolled"), RANGES)
async def test_funnels_from_steps_count_like_the_reference(
    layout: DataLayout, date_range: Any, timezone: str, rolled: int
) -> None:
    query = query_for(None, date_range, timezone)
    await assert_funnel_like_reference(
        QueryEngine(layout), stored_events(layout.events), query, rolled=rolled
    )


@pytest.mark.parametrize("dimension", DIMENSIONS)
@pytest.mark.parametrize(("date_range", "timezone", "rolled"), RANGES)
async def test_pairs_answer_like_the_reference(
    layout: DataLayout, dimension: str | None, date_range: Any, timezone: str, rolled: int
) -> None:
    events = stored_events(layout.events)
    query = query_for(dimension, date_range, timezone)
    await assert_like_reference(QueryEngine(layout), events, query, rolled=rolled)


@pytest.mark.parametrize(("date_range", "timezone", "rolled"), RANGES)
async def test_percentage_is_of_all_visitors_of_the_range(
    layout: DataLayout, date_range: Any, timezone: str, rolled: int
) -> None:
    """Including a visitor seen before, on and after the range's rolled days, and one
    whose visit runs into the New York range (it starts at 05:00 UTC), back on a rolled day."""
    days = [day_number(END) - 4, day_number(END) - 2, day_number(END)]
    hour = 3_600_000_000
    at_ten = 10 * hour  # inside the New York range's first, partial UTC day too
    returning = [
        make_event(site_id=SITE, visitor_id=88, pathname=f"/{day}", timestamp=day * DAY_US + at_ten)
        for day in days
    ] + [
        make_event(site_id=SITE, visitor_id=89, pathname="/across", timestamp=at)
        for at in (days[0] * DAY_US + 4 * hour + 50 * 60_000_000, days[0] * DAY_US + 5 * hour + 1,
                   days[1] * DAY_US + at_ten)
    ]  # fmt: skip
    write_batch(events_to_table(returning), layout, "20260101T000000-1-dddddddd-00000001")
    compact(layout, before=END)
    events = stored_events(layout.events)
    body = {
        "site_id": SITE,
        "metrics": ["visitors", "percentage"],
        "dimensions": ["visit:entry_page"],
    }
    query = parse_query({**body, "date_range": date_range, "timezone": timezone}, today=END)
    assert aggregate_sql(query).derived == "seen"
    bounds = {"start_us": micros(query.date_range.start), "end_us": micros(query.date_range.end)}
    total = ref.aggregate(events, ["visitors"], **bounds)["visitors"]
    expected = [
        (page, [m["visitors"], float(ref.round_half_up(Fraction(100 * m["visitors"], total), 2))])
        for page, m in ref.breakdown(events, "visit:entry_page", ["visitors"], **bounds)
    ]
    answer = await run_query(QueryEngine(layout), query)
    assert [(row["dimensions"][0], row["metrics"]) for row in answer["results"]] == expected
    for dimension in (None, "visit:entry_page"):  # the visitors in total and by entry page too
        query = query_for(dimension, date_range, timezone)
        await assert_like_reference(QueryEngine(layout), events, query, rolled=rolled)


def test_pairs_say_when_a_pair_was_last_seen_before(layout: DataLayout) -> None:
    """A hand-made visitor on three days: the pair of a day points at the latest earlier one."""
    first = day_number(END) - 3
    visits = [(first, 10, "/a"), (first, 11, "/a"), (first + 1, 9, "/b"), (first + 2, 8, "/a")]
    events = [
        make_event(site_id=SITE, visitor_id=77, pathname=page,
                   timestamp=day * DAY_US + hour * 3_600_000_000)
        for day, hour, page in visits
    ]  # fmt: skip
    write_batch(events_to_table(events), layout, "20260101T000000-1-aaaaaaaa-00000001")
    compact(layout, before=END)

    def pair(day: int, kind: str, value: str) -> dict[str, Any]:
        name = read_manifest(manifest_path(layout, SITE)).days[day]
        rows = pq.read_table(pair_file(layout, SITE, day, name)).to_pylist()
        [row] = [r for r in rows if (r["visitor_id"], r["kind"], r["value"]) == (77, kind, value)]
        return row

    def at(day: int, hour: int) -> dt.datetime:
        return dt.datetime.fromtimestamp((day * DAY_US + hour * 3_600_000_000) / 1e6, dt.UTC)

    assert pair(first, "page", "/a")["previously_seen"] is None
    assert pair(first, "page", "/a")["events"] == 2
    assert pair(first + 1, "page", "/b")["previously_seen"] is None
    assert pair(first + 2, "page", "/a")["previously_seen"] == at(first, 11)
    assert pair(first + 2, "name", "pageview")["previously_seen"] == at(first + 1, 9)

    # the visitor keeps their number, and each event is a funnel step row once
    def steps(day: int) -> list[dict[str, Any]]:
        name = read_manifest(manifest_path(layout, SITE)).days[day]
        return pq.read_table(step_file(layout, SITE, day, name)).to_pylist()

    [number] = {
        row["visitor_number"]
        for day in range(first, first + 3)
        for row in steps(day)
        if row["visitor_id"] == 77
    }
    mine = [
        (r["kind"], r["value"], r["timestamp"])
        for r in steps(first)
        if r["visitor_number"] == number
    ]
    assert mine == [
        ("page", "/a", at(first, 10)),
        ("page", "/a", at(first, 11)),
        ("visitor", None, at(first, 10)),
    ]

    # four visits (two on the first day, an hour apart); the visit rollups say when
    # the visitor, and the visitor on the same entry page, came before
    def visit(day: int) -> list[tuple[Any, ...]]:
        name = read_manifest(manifest_path(layout, SITE)).days[day]
        rows = pq.read_table(layout.rollup(SITE, day_to_date(day), name)).to_pylist()
        return [
            (r["visit_start"], r["seen_visitor"], r["seen_gap_entry_page"])
            for r in rows if r["visitor_id"] == 77
        ]  # fmt: skip

    hours = 3_600_000_000
    assert visit(first) == [(at(first, 10), None, None), (at(first, 11), at(first, 10), 0)]
    assert visit(first + 1) == [(at(first + 1, 9), at(first, 11), None)]
    assert visit(first + 2) == [(at(first + 2, 8), at(first + 1, 9), 22 * hours)]  # on /a at 11


@pytest.mark.parametrize("dimension", ["event:page", "visit:entry_page", None])
async def test_a_late_file_in_an_earlier_day_is_counted_once(
    layout: DataLayout, dimension: str | None
) -> None:
    """A pair added to an earlier day makes the later days' pairs stale until rebuilt."""
    events = stored_events(layout.events)
    late_day, later_day = day_number(END) - 5, day_number(END) - 3
    on_late_day = {(e.visitor_id, e.pathname) for e in events if e.timestamp // DAY_US == late_day}
    seen_later = next(
        e for e in events
        if e.timestamp // DAY_US == later_day and e.event_name == "pageview"
        and (e.visitor_id, e.pathname) not in on_late_day
    )  # fmt: skip
    late = seen_later._replace(timestamp=late_day * DAY_US + 1_000_000)
    write_batch(events_to_table([late]), layout, "20260101T000000-1-bbbbbbbb-00000001")
    events.append(late)
    engine = QueryEngine(layout)
    query = query_for(dimension, [(END - dt.timedelta(days=6)).isoformat(), END.isoformat()])
    await assert_like_reference(engine, events, query, rolled=1)  # only the day before it
    await assert_funnel_like_reference(engine, events, query, rolled=1)

    report = compact(layout, before=END)
    assert report.partitions == 1 and report.pair_days == 5  # the late day and every later one
    await assert_like_reference(engine, events, query, rolled=6)
    await assert_funnel_like_reference(engine, events, query, rolled=6)


@pytest.mark.parametrize("dimension", ["event:name", "visit:source", None])
async def test_erased_rows_leave_the_pairs(layout: DataLayout, dimension: str | None) -> None:
    erased_day = END - dt.timedelta(days=4)
    start = dt.datetime.combine(erased_day, dt.time(9), dt.UTC)
    end = start + dt.timedelta(hours=6)
    erase(layout, Tombstones(layout), SITE, start, end)
    events = stored_events(layout.events)
    assert not any(micros(start) <= e.timestamp < micros(end) for e in events)
    engine = QueryEngine(layout)
    query = query_for(dimension, [(END - dt.timedelta(days=7)).isoformat(), END.isoformat()])
    await assert_like_reference(engine, events, query, rolled=3)  # the days before it
    await assert_funnel_like_reference(engine, events, query, rolled=3)

    compact(layout, before=END)
    await assert_like_reference(engine, events, query, rolled=7)
    await assert_funnel_like_reference(engine, events, query, rolled=7)


@pytest.mark.parametrize("dimension", ["event:page", "visit:entry_page", None])
async def test_unflushed_events_of_a_day_are_read_with_its_events(
    layout: DataLayout, dimension: str | None
) -> None:
    events = stored_events(layout.events)
    busy_day = day_number(END) - 2
    unflushed = [
        make_event(site_id=SITE, visitor_id=e.visitor_id, pathname="/unflushed",
                   timestamp=busy_day * DAY_US + 5)
        for e in events[:3]
    ]  # fmt: skip
    table = events_to_table(unflushed)
    engine = QueryEngine(layout, pending=lambda: [("unflushed-batch", lambda _site: table)])
    query = query_for(dimension, [(END - dt.timedelta(days=7)).isoformat(), END.isoformat()])
    await assert_like_reference(engine, events + unflushed, query, rolled=5)
    await assert_funnel_like_reference(engine, events + unflushed, query, rolled=5)


async def test_lost_pairs_are_rebuilt(layout: DataLayout) -> None:
    """Without pairs (or with a manifest of another version), nothing is read from them."""
    assert refresh_pairs(layout, SITE, END) == 0  # nothing changed
    shutil.rmtree(layout.pairs)
    engine = QueryEngine(layout)
    week = [(END - dt.timedelta(days=7)).isoformat(), END.isoformat()]
    for dimension in ("event:page", "visit:source"):
        query = query_for(dimension, week)
        await assert_like_reference(engine, stored_events(layout.events), query, rolled=0)
        assert compact(layout, before=END).pair_days == 7
        await assert_like_reference(engine, stored_events(layout.events), query, rolled=7)
        path = manifest_path(layout, SITE)  # as an older Mallard wrote it: built again
        path.write_text(path.read_text().replace(f'"version": {VERSION}', '"version": 1'))


@pytest.mark.parametrize("too_many", ["rolled", "fresh"])
async def test_funnels_too_large_for_memory_read_events(
    layout: DataLayout, monkeypatch: pytest.MonkeyPatch, too_many: str
) -> None:
    """Candidates read from steps beyond query_memory_mb: the funnel runs in DuckDB."""
    engine = QueryEngine(layout)
    query = query_for(None, [(END - dt.timedelta(days=7)).isoformat(), END.isoformat()])
    snapshot, _ = engine._view(
        SITE, query.date_range.start, query.date_range.end, [], derived="steps"
    )
    rolled = sum(funnels._plan_steps(path, FUNNEL).rows for path in snapshot.rolled.values())
    allowed = {"rolled": rolled - 1, "fresh": rolled + 1}[too_many]
    monkeypatch.setattr(funnels, "CANDIDATE_BYTES", engine.memory_mb * 1024 * 1024 // allowed)
    with_sql = []
    original = funnels.count_with_sql

    async def count_with_sql(*args: Any) -> list[int]:
        with_sql.append(args)
        return await original(*args)

    monkeypatch.setattr(funnels, "count_with_sql", count_with_sql)
    await assert_funnel_like_reference(engine, stored_events(layout.events), query, rolled=7)
    assert len(with_sql) == 2  # both windows


async def test_lost_steps_are_rebuilt(layout: DataLayout) -> None:
    """Funnels read no day without its steps file, and compaction writes it again."""
    shutil.rmtree(layout.steps / f"site_id={SITE}" / f"date={END - dt.timedelta(days=3)}")
    engine = QueryEngine(layout)
    query = query_for(None, [(END - dt.timedelta(days=7)).isoformat(), END.isoformat()])
    await assert_funnel_like_reference(engine, stored_events(layout.events), query, rolled=4)
    assert compact(layout, before=END).pair_days == 3  # that day and the later ones
    await assert_funnel_like_reference(engine, stored_events(layout.events), query, rolled=7)


async def test_seen_columns_are_built_from_events_when_the_rollups_are_lost(
    layout: DataLayout,
) -> None:
    shutil.rmtree(layout.visits)
    shutil.rmtree(layout.pairs)
    assert refresh_pairs(layout, SITE, END) == 7  # the rollups come back, with seen columns
    query = query_for(
        "visit:entry_page", [(END - dt.timedelta(days=7)).isoformat(), END.isoformat()]
    )
    await assert_like_reference(QueryEngine(layout), stored_events(layout.events), query, rolled=7)


def test_staging_left_by_a_crashed_build_is_removed(
    layout: DataLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build that dies between writing a day aside and swapping it in leaves files in
    tmp/; a later compaction removes them once they are an hour old."""
    shutil.rmtree(layout.pairs)

    def crash(*_: Any) -> None:
        raise OSError("killed")

    monkeypatch.setattr("mallard.storage.pairs.os.replace", crash)
    with pytest.raises(OSError):
        refresh_pairs(layout, SITE, END)
    monkeypatch.undo()
    left = sorted(layout.tmp.glob("*.tmp"))
    assert len(left) == 3  # the day's pairs, visits and steps
    compact(layout, before=END)
    assert sorted(layout.tmp.glob("*.tmp")) == left  # too recent: maybe still being written
    for file in left:
        os.utime(file, (file.stat().st_atime, file.stat().st_mtime - 7200))
    assert compact(layout, before=END).pair_days == 0  # built by the previous compaction
    assert not any(layout.tmp.glob("*.tmp"))


def test_pairs_stop_before_a_day_not_compacted_yet(layout: DataLayout) -> None:
    day = day_number(END) - 3
    late = make_event(site_id=SITE, timestamp=day * DAY_US + 7)
    write_batch(events_to_table([late]), layout, "20260101T000000-1-cccccccc-00000001")
    assert refresh_pairs(layout, SITE, END) == 0  # nothing to build before that day
    manifest = read_manifest(manifest_path(layout, SITE))
    assert manifest.through == day - 1 and max(manifest.days) == day - 1
    folders = sorted(p.name for p in (layout.pairs / f"site_id={SITE}").glob("date=*"))
    assert folders[-1] == f"date={END - dt.timedelta(days=4)}"  # later pairs were stale
    assert compact(layout, before=END).pair_days == 3
    assert read_manifest(manifest_path(layout, SITE)).through == day_number(END) - 1


MANIFEST = PairManifest(through=12, days={10: "c-10.parquet", 11: "c-11.parquet"})
NAMES = {10: ["c-10.parquet"], 11: ["c-11.parquet"], 12: ["flush.parquet"]}


@pytest.mark.parametrize(
    ("names", "busy", "start_us", "end_us", "rolled"),
    [
        (NAMES, set(), 10 * DAY_US, 13 * DAY_US, [10, 11]),  # 12: not built from its files
        (NAMES, set(), 8 * DAY_US, 12 * DAY_US, [10, 11]),  # days 8, 9: no events, no pairs
        (NAMES, {11}, 10 * DAY_US, 13 * DAY_US, [10]),  # unflushed events on day 11
        (NAMES, set(), 10 * DAY_US + 1, 13 * DAY_US, [11]),  # starts inside a current day
        ({**NAMES, 10: ["c-10.parquet", "late.parquet"]}, set(), 10 * DAY_US + 1, 13 * DAY_US, []),
        ({**NAMES, 10: ["c-10.parquet", "late.parquet"]}, set(), 10 * DAY_US, 13 * DAY_US, []),
        ({11: ["c-11.parquet"]}, set(), 10 * DAY_US, 13 * DAY_US, []),  # day 10 lost its events
        (NAMES, set(), 10 * DAY_US, 11 * DAY_US + 5, [10]),  # day 11 not wholly inside
    ],
)
def test_which_days_a_query_reads_from_pairs(
    names: dict[int, list[str]], busy: set[int], start_us: int, end_us: int, rolled: list[int]
) -> None:
    assert rolled_pair_days(MANIFEST, names, busy, start_us, end_us) == rolled
    assert rolled_pair_days(PairManifest(), names, busy, start_us, end_us) == []


@pytest.mark.parametrize("dimension", ["event:page", "visit:country", None])
async def test_days_deleted_by_retention_are_not_counted_as_seen(
    layout: DataLayout, dimension: str | None
) -> None:
    """Later pairs may have been seen on deleted days: those visitors count on their next day."""
    expire(layout, keep_days=5, today=END)
    for area in (layout.events, layout.visits, layout.pairs, layout.steps):
        days = sorted(p.name for p in (area / f"site_id={SITE}").glob("date=*"))
        assert days[0] == f"date={END - dt.timedelta(days=4)}"
    events = stored_events(layout.events)
    engine = QueryEngine(layout)
    query = query_for(dimension, [(END - dt.timedelta(days=9)).isoformat(), END.isoformat()])
    await assert_like_reference(engine, events, query, rolled=0)  # the pairs list deleted days
    assert compact(layout, before=END).pair_days == 0  # nothing to rebuild
    await assert_like_reference(engine, events, query, rolled=4)
    await assert_funnel_like_reference(engine, events, query, rolled=4)
