"""Compaction: one sorted file per finished day, never a gap or a duplicate for readers."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import trio

from mallard import server as server_module
from mallard.query.engine import QueryEngine, UnreadableFile
from mallard.query.model import parse_query
from mallard.query.sql import reads_rollup
from mallard.query.stats import run_query
from mallard.storage.compaction import SETTLE_SECONDS, compact
from mallard.storage.layout import DataLayout
from mallard.storage.parquet import write_batch
from mallard.storage.schema import EVENT_SCHEMA, VISIT_SCHEMA, events_to_table
from tests.conftest import SEED_EVENT, start_process
from tests.factories import DAY_US, make_event, make_events

DAY = dt.date(1970, 1, 1) + dt.timedelta(days=20_000)
DAY_SPAN = dt.timedelta(days=1)


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    layout = DataLayout(tmp_path / "data")
    layout.create()
    return layout


def fill(layout: DataLayout, files: int = 6, per_file: int = 50) -> list:
    events = make_events(files * per_file)
    for index in range(files):
        chunk = events[index * per_file : (index + 1) * per_file]
        write_batch(events_to_table(chunk), layout, f"20260101T000000-1-aaaaaaaa-{index:08d}")
    return events


def partition_files(layout: DataLayout, site: str = "a.com") -> list[Path]:
    return sorted(layout.partition(site, 20_000).glob("*.parquet"))


def test_compaction_merges_a_day_into_one_sorted_file(layout: DataLayout) -> None:
    events = fill(layout)
    assert len(partition_files(layout)) == 6
    report = compact(layout, before=DAY + dt.timedelta(days=1))
    assert (report.partitions, report.files_in, report.files_out) == (3, 18, 3)
    [merged] = partition_files(layout)
    table = pq.read_table(merged)
    assert table.schema == EVENT_SCHEMA
    keys = list(zip(table["visitor_id"].to_pylist(), table["timestamp"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    site_events = [e for e in events if e.site_id == "a.com"]
    assert Counter(table["pathname"].to_pylist()) == Counter(e.pathname for e in site_events)
    assert compact(layout, before=DAY + dt.timedelta(days=1)).files_in == 0  # nothing left to do


def test_today_is_compacted_as_far_as_it_has_come(layout: DataLayout) -> None:
    """By default today's files are merged too, except those flushed in the last minutes
    (yesterday's too: the writer may still flush its last events)."""
    today = dt.datetime.now(dt.UTC).date()
    start_us = int(dt.datetime.combine(today, dt.time(), dt.UTC).timestamp() * 1_000_000)
    events = [
        make_event(site_id="a.com", visitor_id=i % 5, timestamp=start_us + i) for i in range(9)
    ]
    long_ago = time.time() - 2 * SETTLE_SECONDS
    for index in range(3):
        [file] = write_batch(
            events_to_table(events[index * 3 : index * 3 + 3]), layout, f"w-{index:08d}"
        )
        if index < 2:
            os.utime(file, (long_ago, long_ago))
    assert compact(layout).files_in == 2
    partition = layout.partition("a.com", start_us // DAY_US)
    names = sorted(f.name for f in partition.glob("*.parquet"))
    assert (
        len(names) == 2 and names[0].startswith("compacted-") and names[1] == "w-00000002.parquet"
    )
    assert layout.rollup("a.com", today, names[0]).exists()
    assert compact(layout).files_in == 0  # the newest file is left for the next run
    os.utime(partition / names[1], (long_ago, long_ago))
    assert compact(layout).files_in == 2  # then merged with the rest of the day
    [merged] = partition.glob("*.parquet")
    assert pq.read_table(merged).num_rows == 9
    late = make_event(site_id="a.com", timestamp=start_us - 1)  # yesterday's, flushed just now
    [file] = write_batch(events_to_table([late]), layout, "w-00000003")
    assert compact(layout).files_in == 0 and file.exists()
    os.utime(file, (long_ago, long_ago))
    assert compact(layout).files_in == 1


def test_a_swap_cut_short_by_a_crash_is_finished_not_merged_again(
    layout: DataLayout, tmp_path: Path
) -> None:
    """A crash after the merged file's rename leaves the files it replaced: queries do
    not read them, and the next compaction deletes them."""
    fill(layout, files=3)
    partition = layout.partition("a.com", 20_000)
    sources = partition_files(layout)
    kept = tmp_path / "kept"
    kept.mkdir()
    for file in sources:
        shutil.copy2(file, kept / file.name)  # the same name, size and modification time
    compact(layout, before=DAY + dt.timedelta(days=1))
    [merged] = partition_files(layout)
    rows = pq.read_table(merged).num_rows
    for file in sources[:2]:
        shutil.copy2(kept / file.name, file)  # not yet deleted when the crash came
    stale_rollup = layout.rollup("a.com", DAY, sources[0].name)
    shutil.copy2(layout.rollup("a.com", DAY, merged.name), stale_rollup)
    replaced = kept / sources[2].name  # a new file under an old name is new data
    shutil.copy2(replaced, partition / replaced.name)
    os.utime(partition / replaced.name)
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)
    engine = QueryEngine(layout, cache_entries=0)
    range_ = {"site_id": "a.com", "start": start, "end": start + dt.timedelta(days=1)}
    _, [(events,)] = trio.run(partial(engine.fetch, "SELECT count(*) FROM source", **range_))
    assert events == rows + pq.read_table(replaced).num_rows  # read once, before compaction
    assert compact(layout, before=DAY + dt.timedelta(days=1)).files_in == 2
    [merged] = partition_files(layout)
    assert pq.read_table(merged).num_rows == rows + pq.read_table(replaced).num_rows
    assert not stale_rollup.exists()


def test_unfinished_days_and_in_flight_files_are_left_alone(layout: DataLayout) -> None:
    fill(layout)
    assert compact(layout, before=DAY).partitions == 0  # the day is not finished yet
    in_flight = layout.wal / "20260101T000000-1-aaaaaaaa" / "00000003.wal"
    in_flight.parent.mkdir(parents=True)
    in_flight.write_bytes(b"")  # its segment exists: a replay may still write the file
    compact(layout, before=DAY + dt.timedelta(days=1))
    names = [f.name for f in partition_files(layout)]
    assert len(names) == 2
    assert "20260101T000000-1-aaaaaaaa-00000003.parquet" in names


def test_files_from_other_tools_are_compacted_too(layout: DataLayout) -> None:
    events = fill(layout, files=2)
    imported = pa.table(
        {
            "site_id": ["a.com"],
            "visitor_id": pa.array([7], pa.int64()),
            "timestamp": pa.array([20_000 * DAY_US + 5], pa.timestamp("us", tz="UTC")),
            "event_name": ["pageview"],
            "pathname": ["/imported"],
            "hostname": ["a.com"],
        }
    )
    pq.write_table(imported, layout.partition("a.com", 20_000) / "backup.parquet")
    compact(layout, before=DAY + dt.timedelta(days=1))
    [merged] = partition_files(layout)
    table = pq.read_table(merged)
    assert "/imported" in table["pathname"].to_pylist()
    assert table.num_rows == len([e for e in events if e.site_id == "a.com"]) + 1


def _imported(columns: int | None = None) -> pa.Table:
    """One pageview of visitor 7: of our shape, or as another tool might write it, the
    first ``columns`` columns of the event schema in reverse order."""
    event = make_event(site_id="a.com", visitor_id=7, timestamp=20_000 * DAY_US + 5,
                       browser="Imported")  # fmt: skip
    table = events_to_table([event])
    return table if columns is None else table.select(table.column_names[columns - 1 :: -1])


def test_files_of_another_shape_are_read_beside_mallards_own(layout: DataLayout) -> None:
    """Mallard's own files are read without ``union_by_name`` (``FileShapes``); a file
    with fewer columns, also one that replaced a file of our shape, is still read."""
    events = fill(layout, files=2)
    own = len([e for e in events if e.site_id == "a.com"])
    engine = QueryEngine(layout)
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)

    def read() -> list[tuple]:
        sql = "SELECT count(*), list(browser) FILTER (visitor_id = 7) FROM source"
        fetch = partial(engine.fetch, sql, site_id="a.com", start=start, end=start + DAY_SPAN)
        return trio.run(fetch)[1]

    backup = layout.partition("a.com", 20_000) / "backup.parquet"
    pq.write_table(_imported(), backup)
    assert read() == [(own + 1, ["Imported"])]
    pq.write_table(_imported(columns=6), backup)  # in place of a file of our shape
    assert read() == [(own + 1, [None])]  # no browser column
    pq.write_table(_imported(columns=14), backup)
    assert read() == [(own + 1, ["Imported"])]
    engine.close()


NOON = dt.datetime.combine(DAY, dt.time(12), dt.UTC)
NS, MS, US = (pa.timestamp(unit, tz="UTC") for unit in ("ns", "ms", "us"))
NAIVE, BERLIN = pa.timestamp("us"), pa.timestamp("ms", "Europe/Berlin")
OTHER_TYPES = {  # another tool's column types that read as the event schema's
    "timestamp in ns": ("timestamp", pa.array([NOON], NS)),
    "timestamp without zone": ("timestamp", pa.array([NOON.replace(tzinfo=None)], NAIVE)),
    "timestamp in ms, Berlin": ("timestamp", pa.array([NOON], MS).cast(BERLIN)),
    "int32 visitor_id": ("visitor_id", pa.array([7], pa.int32())),
    "dictionary pathname": ("pathname", pa.array(["/"]).dictionary_encode()),
    "float revenue": ("revenue_amount", pa.array([12.345], pa.float64())),
    "a column of its own": ("extra", pa.array(["x"])),
    "no site_id (the partition's)": ("site_id", None),
}  # fmt: skip


def _of_other_types(name: str, values: pa.Array | None) -> pa.Table:
    """One pageview of visitor 7 at noon, its column ``name`` made of ``values`` (or left
    out)."""
    table = pa.table({
        "site_id": ["a.com"], "visitor_id": pa.array([7], pa.int64()),
        "timestamp": pa.array([NOON], US), "event_name": ["pageview"], "pathname": ["/"],
        "hostname": ["a.com"],
    })  # fmt: skip
    if values is None:
        return table.drop_columns([name])
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def _fetch_day(layout: DataLayout, sql: str) -> list[tuple]:
    """The rows of ``sql`` over a.com's events of ``DAY``, through a query engine."""
    engine = QueryEngine(layout)
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)
    fetch = partial(engine.fetch, sql, site_id="a.com", start=start, end=start + DAY_SPAN)
    try:
        return trio.run(fetch)[1]
    finally:
        engine.close()


@pytest.mark.parametrize("variant", OTHER_TYPES)
def test_columns_of_other_types_are_read_and_compacted_as_ours(
    layout: DataLayout, variant: str
) -> None:
    fill(layout, files=2)
    pq.write_table(
        _of_other_types(*OTHER_TYPES[variant]), layout.partition("a.com", 20_000) / "other.parquet"
    )
    expected = visits_from_events = visits(layout)  # visits are built from events: they read it
    sql = "SELECT timestamp, pathname, revenue_amount FROM source WHERE visitor_id = 7"
    read = _fetch_day(layout, sql)
    revenue = Decimal("12.35") if variant == "float revenue" else None  # to the cent
    assert read == [(NOON, "/", revenue)]
    compact(layout, before=DAY + dt.timedelta(days=1))
    [merged] = partition_files(layout)
    imported = pq.read_table(merged).filter(pc.equal(pc.field("visitor_id"), 7)).to_pylist()
    assert [(e["timestamp"], e["pathname"], e["revenue_amount"]) for e in imported] == read
    assert visits(layout) == expected == visits_from_events


def test_integers_beyond_the_event_columns_are_read_and_compacted_alike(
    layout: DataLayout,
) -> None:
    """Unsigned 64-bit visitor ids (a hash of another tool) read bit for bit, so they stay
    distinct; a screen width beyond 32 bits reads as unknown."""
    fill(layout, files=2)
    ids = [7, 2**63, 2**64 - 1]
    table = pa.table({
        "site_id": ["a.com"] * 3, "visitor_id": pa.array(ids, pa.uint64()),
        "timestamp": pa.array([NOON] * 3, US), "event_name": ["pageview"] * 3,
        "pathname": ["/unsigned"] * 3, "hostname": ["a.com"] * 3,
        "screen_width": pa.array([1920, 2**40, 390], pa.int64()),
    })  # fmt: skip
    pq.write_table(table, layout.partition("a.com", 20_000) / "other.parquet")
    sql = "SELECT visitor_id, screen_width FROM source WHERE pathname = '/unsigned' ORDER BY 1"
    read = _fetch_day(layout, sql)
    assert read == [(-(2**63), None), (-1, 390), (7, 1920)]
    compact(layout, before=DAY + dt.timedelta(days=1))
    [merged] = partition_files(layout)
    rows = pq.read_table(merged).filter(pc.equal(pc.field("pathname"), "/unsigned"))
    assert sorted((e["visitor_id"], e["screen_width"]) for e in rows.to_pylist()) == read


@pytest.mark.parametrize(
    ("name", "values"),
    [("timestamp", pa.array([0], pa.int64())), ("visitor_id", pa.array(["7"], pa.string()))],
)
def test_a_column_that_does_not_convert_is_named(
    layout: DataLayout, name: str, values: pa.Array
) -> None:
    fill(layout, files=2)
    pq.write_table(
        _of_other_types(name, values), layout.partition("a.com", 20_000) / "other.parquet"
    )
    with pytest.raises(UnreadableFile, match=f"its column {name} is {values.type}, not "):
        _fetch_day(layout, "SELECT 1")
    [skipped] = compact(layout, before=DAY + dt.timedelta(days=1)).skipped
    assert f"other.parquet: its column {name} is {values.type}, not " in skipped


def test_a_value_beyond_its_column_leaves_its_day_alone_with_the_reason(
    layout: DataLayout,
) -> None:
    """An amount of 1e20 passes the type check but not DuckDB's cast to DECIMAL(12, 2)."""
    fill(layout, files=2)
    amount = pa.array([1e20], pa.float64())
    other = layout.partition("a.com", 20_000) / "other.parquet"
    pq.write_table(_of_other_types("revenue_amount", amount), other)
    [skipped] = compact(layout, before=DAY + dt.timedelta(days=1)).skipped
    assert "other.parquet: Conversion Error" in skipped
    assert other.exists()


def test_a_file_that_cannot_be_merged_leaves_its_day_alone(
    layout: DataLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """Not Parquet, or without a column every event needs: that day keeps its files (a
    warning names the file), the other days are compacted, queries read what they can."""
    events = fill(layout, files=2)
    garbage = layout.partition("b.org", 20_000) / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    lacking = layout.partition("a.com", 20_000) / "no-hostname.parquet"
    pq.write_table(_imported().drop_columns(["hostname"]), lacking)
    before = {site: sorted(layout.partition(site, 20_000).iterdir()) for site in ("a.com", "b.org")}
    report = compact(layout, before=DAY + dt.timedelta(days=1))
    assert len(report.skipped) == 2
    assert "no-hostname.parquet: no hostname column, which every event needs" in caplog.text
    assert "garbage.parquet:" in caplog.text
    for site, files in before.items():
        assert sorted(layout.partition(site, 20_000).iterdir()) == files
    assert [f.name[:10] for f in partition_files(layout, "c.net")] == ["compacted-"]
    engine = QueryEngine(layout)
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)
    fetch = partial(engine.fetch, "SELECT count(*), count(hostname) FROM source",
                    site_id="a.com", start=start, end=start + DAY_SPAN)  # fmt: skip
    own = len([e for e in events if e.site_id == "a.com"])
    assert trio.run(fetch)[1] == [(own + 1, own)]
    engine.close()


def visits(layout: DataLayout, site: str = "a.com") -> int:
    query = parse_query({"site_id": site, "metrics": ["visits"], "date_range": [str(DAY)] * 2})
    assert reads_rollup(query)
    answer = trio.run(run_query, QueryEngine(layout), query)
    return answer["results"][0]["metrics"][0]


def rollups(layout: DataLayout, site: str = "a.com") -> list[Path]:
    return sorted((layout.visits / f"site_id={site}" / f"date={DAY}").glob("*.parquet"))


def test_compaction_writes_the_days_visits_beside_it(layout: DataLayout) -> None:
    events = fill(layout)
    compact(layout, before=DAY + dt.timedelta(days=1))
    [merged], [rollup] = partition_files(layout), rollups(layout)
    assert rollup.name == merged.name
    table = pq.read_table(rollup)
    assert table.schema == VISIT_SCHEMA
    site_events = [e for e in events if e.site_id == "a.com"]  # one visitor each
    assert table.num_rows == len(site_events) == visits(layout)
    pq.write_table(table.slice(0, 3), rollup)  # proof that queries read the rollup
    assert visits(layout) == 3


def test_a_file_landing_in_a_compacted_day_is_read_until_compacted_again(
    layout: DataLayout,
) -> None:
    fill(layout)
    compact(layout, before=DAY + dt.timedelta(days=1))
    before = visits(layout)
    late = make_event(site_id="a.com", visitor_id=-1, timestamp=20_000 * DAY_US + 7)
    write_batch(events_to_table([late]), layout, "20260102T000000-1-bbbbbbbb-00000000")
    assert visits(layout) == before + 1  # the stale rollup is not used
    compact(layout, before=DAY + dt.timedelta(days=1))
    assert len(partition_files(layout)) == len(rollups(layout)) == 1
    assert visits(layout) == before + 1


def test_a_lone_imported_file_gets_its_rollup(layout: DataLayout) -> None:
    write_batch(events_to_table(make_events(30, sites=("a.com",))), layout, "backup")
    report = compact(layout, before=DAY + dt.timedelta(days=1))
    assert (report.files_in, report.files_out) == (1, 1)
    [merged], [rollup] = partition_files(layout), rollups(layout)
    assert merged.name.startswith("compacted-") and rollup.name == merged.name
    assert visits(layout) == 30
    assert compact(layout, before=DAY + dt.timedelta(days=1)).files_in == 0


def test_queries_never_see_a_gap_or_a_duplicate(layout: DataLayout) -> None:
    fill(layout, files=20, per_file=30)
    expected = len([e for e in make_events(600) if e.site_id == "a.com"])
    engine = QueryEngine(layout)
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)
    counts: list[int] = []
    done = threading.Event()

    def compaction() -> None:
        compact(layout, before=DAY + dt.timedelta(days=1))
        done.set()

    async def read_while_compacting() -> None:
        worker = threading.Thread(target=compaction)
        worker.start()
        while not done.is_set() or len(counts) < 5:
            _, rows = await engine.fetch(
                "SELECT count(*), count(DISTINCT pathname) FROM source",
                site_id="a.com",
                start=start,
                end=start + dt.timedelta(days=1),
            )
            counts.extend(rows[0])
        worker.join()

    trio.run(read_while_compacting)
    assert set(counts) == {expected}
    assert len(partition_files(layout)) == 1


def mallard_compact(layout: DataLayout) -> subprocess.CompletedProcess[str]:
    """``mallard compact`` of the days up to ``DAY``, in a process of its own."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
    return subprocess.run(
        [sys.executable, "-m", "mallard", "compact", "--data-dir", str(layout.root),
         "--before", (DAY + dt.timedelta(days=1)).isoformat()],
        capture_output=True, text=True, env=environment, timeout=120,
    )  # fmt: skip


def test_mallard_compact_command(layout: DataLayout) -> None:
    fill(layout)
    result = mallard_compact(layout)
    assert result.returncode == 0, result.stderr
    assert "compacting [" in result.stderr and "3/3" in result.stderr
    assert "compacted 18 files into 3" in result.stderr
    assert len(partition_files(layout)) == 1


def test_mallard_compact_of_events_alone(layout: DataLayout) -> None:
    """A restored backup or another tool's output: events/ and nothing else."""
    fill(layout)
    for folder in layout.root.iterdir():
        if folder != layout.events:
            shutil.rmtree(folder)
    result = mallard_compact(layout)
    assert result.returncode == 0, result.stderr
    assert len(partition_files(layout)) == 1


def test_a_day_that_cannot_be_compacted_is_reported_and_the_server_keeps_serving(
    layout: DataLayout,
) -> None:
    fill(layout)
    (layout.partition("b.org", 20_000) / "garbage.parquet").write_bytes(b"not parquet")
    result = mallard_compact(layout)
    assert result.returncode == 1
    [skipped] = [line for line in result.stderr.splitlines() if "not compacted" in line]
    assert "site_id=b.org" in skipped and "garbage.parquet: " in skipped
    assert len(partition_files(layout)) == 1  # a.com's day was compacted all the same
    server = start_process(layout.root)  # compacts at start, the same day again
    deadline = time.monotonic() + 30
    while "cannot compact" not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "garbage.parquet" in server.log
    params = {"site_id": "a.com", "period": "custom", "date": f"{DAY},{DAY}"}
    answer = httpx.get(f"{server.url}/api/stats/main", params=params, timeout=30)
    assert answer.status_code == 200
    server.signal()
    assert server.wait() == 0
    assert "Traceback" not in server.log


async def test_a_failing_compaction_is_logged_and_the_server_goes_on(
    start_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unforeseen(layout: DataLayout) -> None:
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(server_module, "compact", unforeseen)
    server = await start_server(compaction_interval=0.05)
    with trio.fail_after(10):
        while caplog.text.count("compaction failed: something unforeseen") < 2:
            await trio.sleep(0.02)  # logged, and tried again
    assert (await server.post_event(SEED_EVENT)).status_code == 202


def test_cached_answers_never_outlive_the_data(layout: DataLayout) -> None:
    fill(layout, files=2)
    pending: list[tuple[str, pa.Table]] = []
    engine = QueryEngine(layout, pending=lambda: [(name, lambda _, t=t: t) for name, t in pending])
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)
    range_ = {"site_id": "a.com", "start": start, "end": start + dt.timedelta(days=1)}

    def count() -> int:
        _, rows = trio.run(partial(engine.fetch, "SELECT count(*) FROM source", **range_))
        return rows[0][0]

    first = count()
    assert count() == first and engine.cache.hits == 1
    late = make_event(site_id="a.com", visitor_id=-1, timestamp=20_000 * DAY_US + 9)
    pending.append(("batch-0", events_to_table([late])))  # accepted, not flushed
    assert count() == first + 1
    pending.clear()
    write_batch(events_to_table([late]), layout, "20260102T000000-1-cccccccc-00000000")
    assert count() == first + 1  # flushed: a new file, a new key
    compact(layout, before=DAY + dt.timedelta(days=1))
    assert count() == first + 1
    assert engine.cache.hits == 1


def test_visits_of_a_day_without_rollup_follow_its_events(layout: DataLayout) -> None:
    """Unflushed, flushed meanwhile, or new: the visits of a day not rolled up count them."""
    fill(layout, files=2)
    compact(layout, before=DAY + dt.timedelta(days=1))  # DAY rolled up, the next day fresh
    pending: list[tuple[str, pa.Table]] = []
    engine = QueryEngine(
        layout, pending=lambda: [(name, lambda _, t=t: t) for name, t in pending], cache_entries=0
    )
    two_days = [str(DAY), str(DAY + dt.timedelta(days=1))]
    query = parse_query({"site_id": "a.com", "metrics": ["visits"], "date_range": two_days})
    assert reads_rollup(query)

    def visits() -> int:
        return trio.run(run_query, engine, query)["results"][0]["metrics"][0]

    def next_day(visitor: int) -> pa.Table:
        return events_to_table([make_event(site_id="a.com", visitor_id=visitor,
                                           timestamp=20_001 * DAY_US + 60_000_000)])  # fmt: skip

    first = visits()
    assert visits() == first
    pending.append(("20260102T000000-1-dddddddd-00000000", next_day(-1)))  # accepted, unflushed
    assert visits() == first + 1
    write_batch(next_day(-1), layout, "20260102T000000-1-dddddddd-00000000")  # flushed meanwhile
    assert visits() == first + 1
    pending.clear()
    write_batch(next_day(-2), layout, "20260102T000000-1-dddddddd-00000001")
    assert visits() == first + 2


def test_a_batch_flushed_while_a_query_starts_is_counted_once(layout: DataLayout) -> None:
    """The writer's tables are taken before the files are listed: both may hold a batch."""
    two_days = [
        make_event(site_id="a.com", visitor_id=i, timestamp=(20_000 + i % 2) * DAY_US + i)
        for i in range(10)
    ]
    batch = events_to_table(two_days)
    engine = QueryEngine(layout, pending=lambda: [("w-00000007", lambda _: batch)])
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)

    def count() -> int:
        query = partial(
            engine.fetch, "SELECT count(*) FROM source", site_id="a.com",
            start=start, end=start + dt.timedelta(days=2),
        )  # fmt: skip
        return trio.run(query)[1][0][0]

    assert count() == 10  # nothing written yet
    first_day = events_to_table([e for e in two_days if e.day == 20_000])
    write_batch(first_day, layout, "w-00000007")  # the flush has written one of two files
    assert count() == 10
    write_batch(batch, layout, "w-00000007")  # and the other
    assert count() == 10
