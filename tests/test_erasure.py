"""Erasure and retention on real Parquet: exactly the asked range goes, nothing else."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mallard.storage.compaction import compact
from mallard.storage.erasure import (
    Tombstone,
    Tombstones,
    carry_out,
    erase,
    finish_erasures,
    record_erasure,
)
from mallard.storage.layout import DataLayout, batch_name, new_writer_id
from mallard.storage.locks import site_lock
from mallard.storage.parquet import write_batch
from mallard.storage.retention import expire
from mallard.storage.schema import events_to_table
from mallard.storage.wal import WriteAheadLog, recover
from tests.factories import DAY_US, make_event

HOUR_US = 3_600_000_000
FIRST = 20_000  # days since the epoch
DAYS = [dt.date(1970, 1, 1) + dt.timedelta(days=FIRST + i) for i in range(3)]


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    """Two sites, three days, an event every hour; the first two days compacted."""
    layout = DataLayout(tmp_path / "data")
    layout.create()
    events = [
        make_event(site_id=site, visitor_id=hour, timestamp=FIRST * DAY_US + hour * HOUR_US)
        for site in ("a.com", "b.org")
        for hour in range(72)
    ]
    for index in range(0, len(events), 24):
        write_batch(events_to_table(events[index : index + 24]), layout, f"w-{index:08d}")
    compact(layout, before=DAYS[2])
    (layout.dropped / "site_id=a.com" / f"date={DAYS[0]}").mkdir(parents=True)
    return layout


def hours(layout: DataLayout, site: str) -> list[int]:
    """The hours (since the first day) of the site's stored events."""
    glob = str(layout.events / f"site_id={site}" / "**" / "*.parquet")
    rows = duckdb.sql(
        f"SELECT (epoch_us(timestamp) - {FIRST * DAY_US}) // {HOUR_US} AS h "
        f"FROM read_parquet('{glob}') ORDER BY h"
    ).fetchall()
    return [row[0] for row in rows]


def at(day: int, hour: int) -> dt.datetime:
    return dt.datetime.combine(DAYS[day], dt.time(hour), dt.UTC)


def test_erased_rows_not_yet_written_are_counted_once(tmp_path: Path) -> None:
    """Accepted events in the writer's hands when the tombstone is recorded: a batch
    whose file landed before it (its rows are removed from the file), one written
    since (its erased rows left out), one never written yet; and another site's.
    A second erasure of the same range counts none of them again."""
    layout = DataLayout(tmp_path / "data")
    layout.create()

    def batch(site: str, hours: range) -> pa.Table:
        return events_to_table(
            [make_event(site_id=site, timestamp=FIRST * DAY_US + h * HOUR_US) for h in hours]
        )

    landed, since, waiting = (
        batch("a.com", range(3)),
        batch("a.com", range(4)),
        batch("a.com", range(2)),
    )
    other = batch("b.org", range(5))
    write_batch(landed, layout, "landed")
    tombstones = Tombstones(layout)
    tombstone = record_erasure(layout, tombstones, "a.com", at(0, 0), at(0, 3))
    write_batch(since, layout, "since", keep=tombstones.keep)  # keeps hour 3 only
    unwritten = [
        (name, lambda _site, table=table: table)
        for name, table in [
            ("landed", landed),
            ("since", since),
            ("waiting", waiting),
            ("waiting", other),
        ]
    ]
    report = carry_out(layout, tombstones, tombstone, lambda: unwritten)
    assert (report.rows_erased, report.unwritten_rows_erased) == (3, 3 + 2)
    assert hours(layout, "a.com") == [3]
    time.sleep(0.001)  # the same range again, the batches still unwritten: nothing left
    again = record_erasure(layout, tombstones, "a.com", at(0, 0), at(0, 3))
    report = carry_out(layout, tombstones, again, lambda: unwritten)
    assert (report.rows_erased, report.unwritten_rows_erased) == (0, 0)


def test_erase_removes_exactly_the_range(layout: DataLayout) -> None:
    other_site = {f: f.stat().st_mtime_ns for f in layout.events.glob("site_id=b.org/**/*")}
    derived = (layout.visits, layout.pairs, layout.steps)  # all hold visitor ids
    assert all(list(area.glob("site_id=a.com/**/*.parquet")) for area in derived)
    report = erase(layout, Tombstones(layout), "a.com", at(0, 10), at(1, 5))
    assert report.rows_erased == 19 and report.files_rewritten == 2
    assert hours(layout, "a.com") == list(range(10)) + list(range(29, 72))
    assert hours(layout, "b.org") == list(range(72))
    assert {f: f.stat().st_mtime_ns for f in layout.events.glob("site_id=b.org/**/*")} == (
        other_site
    )
    # the touched days' rollups, pairs and steps are gone, compaction writes them again
    assert not any(list(area.glob("site_id=a.com/**/*.parquet")) for area in derived)
    assert all(len(list(area.glob("site_id=b.org/**/*.parquet"))) == 2 for area in derived)
    assert compact(layout, before=DAYS[2]).partitions == 2
    assert hours(layout, "a.com") == list(range(10)) + list(range(29, 72))


def test_erasing_a_whole_day_leaves_no_file(layout: DataLayout) -> None:
    report = erase(layout, Tombstones(layout), "a.com", at(2, 0), at(2, 0) + dt.timedelta(days=1))
    assert (report.rows_erased, report.files_removed) == (24, 1)
    assert hours(layout, "a.com") == list(range(48))


def test_erasure_drops_what_a_crashed_compaction_left_and_counts_it_once(
    layout: DataLayout, tmp_path: Path
) -> None:
    """A file a compacted file already holds is a duplicate: erasure deletes it too."""
    partition = layout.partition("a.com", FIRST + 2)  # today in the fixture: 2 files
    originals = sorted(partition.glob("*.parquet"))
    kept = tmp_path / "kept"
    kept.mkdir()
    for file in originals:
        shutil.copy2(file, kept / file.name)  # the same name, size and modification time
    compact(layout, before=DAYS[2] + dt.timedelta(days=1))
    shutil.copy2(kept / originals[0].name, originals[0])  # not yet deleted when it crashed
    erase(layout, Tombstones(layout), "a.com", at(2, 0), at(2, 6))
    assert hours(layout, "a.com") == [h for h in range(72) if not 48 <= h < 54]  # once each
    assert not originals[0].exists()
    assert compact(layout, before=DAYS[2] + dt.timedelta(days=1)).files_in == 1
    assert hours(layout, "a.com") == [h for h in range(72) if not 48 <= h < 54]


def test_later_visits_forget_when_erased_visits_started(tmp_path: Path) -> None:
    """``seen_visitor`` and ``seen_gap_*`` say when a visitor's earlier visits started:
    an erased visit's time is cleared from the later days' rollups at once."""
    layout = DataLayout(tmp_path / "data")
    layout.create()
    visits = [  # (visitor, day, hour, source)
        (1, 0, 2, "Google"), (1, 1, 3, "Google"),  # came before, inside the erased range
        (2, 0, 20, "Google"), (2, 1, 4, "Google"),  # before, after the range: kept
        (4, 0, 1, "Google"), (4, 0, 21, "Bing"), (4, 1, 5, "Google"),  # last Google erased
    ]  # fmt: skip
    events = [
        make_event(
            site_id="a.com",
            visitor_id=visitor,
            referrer_source=source,
            timestamp=(FIRST + day) * DAY_US + hour * HOUR_US,
        )
        for visitor, day, hour, source in visits
    ]
    write_batch(events_to_table(events), layout, "w-00000000")
    compact(layout, before=DAYS[2])

    def seen(visitor: int) -> tuple[Any, Any]:
        rows = pq.read_table(layout.visits / "site_id=a.com" / f"date={DAYS[1]}").to_pylist()
        [row] = [r for r in rows if r["visitor_id"] == visitor]
        return row["seen_visitor"], row["seen_gap_referrer_source"]

    assert seen(1) == (at(0, 2), 0) and seen(2) == (at(0, 20), 0)
    assert seen(4) == (at(0, 21), 20 * HOUR_US)  # its Google visit at 1:00
    erase(layout, Tombstones(layout), "a.com", at(0, 0), at(0, 10))
    assert seen(1) == (None, None) and seen(4) == (None, None)
    assert seen(2) == (at(0, 20), 0)
    compact(layout, before=DAYS[2])  # built again from what is left
    assert seen(1) == (None, None) and seen(2) == (at(0, 20), 0)
    assert seen(4) == (at(0, 21), None)


def test_an_erasure_cut_short_by_a_crash_is_finished_at_the_next_start(
    layout: DataLayout,
) -> None:
    """kill -9 after the tombstone, before the files: its rows are in Parquet still."""
    tombstones = Tombstones(layout)
    now_us = (FIRST + 9) * DAY_US
    tombstones.add(
        Tombstone("a.com", FIRST * DAY_US, (FIRST + 1) * DAY_US, now_us), layout.tmp / "t"
    )
    assert hours(layout, "a.com") == list(range(72))
    assert finish_erasures(layout, Tombstones(layout)) == 1  # what a start does
    assert hours(layout, "a.com") == list(range(24, 72))
    assert [t.done for t in Tombstones(layout).current()] == [True]
    assert finish_erasures(layout, Tombstones(layout)) == 0
    erase(layout, tombstones, "b.org", at(0, 0), at(0, 1))  # one that ran to its end
    assert [t.done for t in Tombstones(layout).current()] == [True, True]


def test_an_erasure_killed_amid_its_swap_counts_every_event_once(layout: DataLayout) -> None:
    """kill -9 between the renames of the rewritten files: each file is old or new, never
    both (a new one beside its original counted its rows twice for good), and the
    next start finishes the erasure."""
    rest = [h for h in range(72) if not 10 <= h < 30]
    pid = os.fork()
    if pid == 0:  # the erasing process, killed at its second rename into the events
        rename, renamed = os.replace, []

        def killed_at_second_rename(source: Any, destination: Any) -> None:
            if layout.events in Path(destination).parents:
                renamed.append(destination)
                if len(renamed) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            rename(source, destination)

        os.replace = killed_at_second_rename
        erase(layout, Tombstones(layout), "a.com", at(0, 10), at(1, 6))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    stored = hours(layout, "a.com")
    assert len(set(stored)) == len(stored)  # each event once
    assert set(rest) < set(stored) < set(range(72))  # one of the two days erased
    assert finish_erasures(layout, Tombstones(layout)) == 1  # what the next start does
    assert hours(layout, "a.com") == rest
    compact(layout, before=DAYS[2])
    assert hours(layout, "a.com") == rest


def test_an_erasure_of_a_file_whose_log_is_not_retired_yet_is_not_undone_by_replay(
    tmp_path: Path,
) -> None:
    """The writer renamed batch 0's file in and was killed before deleting its segment:
    replay writes the files a batch lacks, and must not take the rewritten one for
    missing (its events would then be stored twice)."""
    layout = DataLayout(tmp_path / "data")
    layout.create()
    writer_id = new_writer_id()
    events = [make_event(site_id="a.com", timestamp=FIRST * DAY_US + h * HOUR_US) for h in range(6)]
    written, tell = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: logs batch 0, renames its file in, never retires it
        WriteAheadLog(layout, writer_id).append(0, events)
        write_batch(events_to_table(events), layout, batch_name(writer_id, 0))
        os.write(tell, b"!")
        time.sleep(60)
        os._exit(0)
    os.read(written, 1)
    erase(layout, Tombstones(layout), "a.com", at(0, 0), at(0, 2))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    recover(layout, Tombstones(layout))  # what the next start does
    assert hours(layout, "a.com") == [2, 3, 4, 5]


def test_a_batch_on_its_way_during_an_erasure_leaves_the_erased_rows_out(
    tmp_path: Path,
) -> None:
    """A flush filtered its batch, then an erasure ran to its end, then the flush renamed
    its file in: the erased rows landed, the erasure done. The filter now runs under
    the site's lock, after any erasure's swap, before the rename."""
    layout = DataLayout(tmp_path / "data")
    layout.create()
    batch = events_to_table(
        [make_event(site_id="a.com", timestamp=FIRST * DAY_US + h * HOUR_US) for h in range(6)]
    )
    layout.partition("a.com", FIRST).parent.mkdir()  # the site's folder, with its lock
    flush = threading.Thread(
        target=write_batch, args=(batch, layout, "w-0"), kwargs={"keep": Tombstones(layout).keep}
    )
    with site_lock(layout, "a.com", exclusive=True):  # an erasure's swap
        flush.start()
        time.sleep(0.2)  # the flush waits for it
        Tombstones(layout).add(
            Tombstone("a.com", FIRST * DAY_US, FIRST * DAY_US + 2 * HOUR_US, 10**18),
            layout.tmp / "t",
        )
    flush.join(5)
    assert hours(layout, "a.com") == [2, 3, 4, 5]


def test_files_other_tools_placed_are_erased_from_like_mallards_own(tmp_path: Path) -> None:
    """Without a site_id column (the folder's), with times in milliseconds, or with
    another site_id than their folder's: queries count their rows as the folder's site."""
    layout = DataLayout(tmp_path / "data")
    layout.create()
    partition = layout.partition("a.com", FIRST)
    partition.mkdir(parents=True)
    stamps = pa.array([at(0, hour) for hour in (1, 2, 3)], pa.timestamp("ms", tz="UTC"))
    columns = {
        "visitor_id": pa.array([1, 2, 3], pa.int64()),
        "event_name": ["pageview"] * 3,
        "pathname": ["/"] * 3,
        "hostname": ["a.com"] * 3,
        "timestamp": stamps,
    }
    pq.write_table(pa.table(columns), partition / "no-site.parquet")
    pq.write_table(pa.table({**columns, "site_id": ["www.a.com"] * 3}), partition / "www.parquet")
    report = erase(layout, Tombstones(layout), "a.com", at(0, 2), at(0, 3))
    assert report.rows_erased == 2 and not report.files_unreadable
    assert hours(layout, "a.com") == [1, 1, 3, 3]
    assert [t.done for t in Tombstones(layout).current()] == [True]


def test_a_file_that_cannot_be_read_as_events_keeps_the_erasure_unfinished(
    layout: DataLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """Its rows stay; the rest is erased, and each start tries again (and still starts)."""
    broken = layout.partition("a.com", FIRST) / "broken.parquet"
    pq.write_table(pa.table({"timestamp": ["not a time"], "visitor_id": [1]}), broken)
    report = erase(layout, Tombstones(layout), "a.com", at(0, 0), at(0, 6))
    assert report.files_unreadable == [f"date={DAYS[0]}/broken.parquet"]
    assert report.rows_erased == 6
    assert "cannot erase from" in caplog.text and "broken.parquet" in caplog.text
    assert [t.done for t in Tombstones(layout).current()] == [False]
    assert finish_erasures(layout, Tombstones(layout)) == 1  # a start: no exception
    broken.unlink()  # the operator removes it
    assert finish_erasures(layout, Tombstones(layout)) == 1
    assert [t.done for t in Tombstones(layout).current()] == [True]
    assert hours(layout, "a.com") == list(range(6, 72))


def test_tombstones_filter_what_is_not_in_parquet_yet(layout: DataLayout) -> None:
    tombstones = Tombstones(layout)
    erase(layout, tombstones, "a.com", at(0, 0), at(2, 12))
    pending = events_to_table(
        [
            make_event(site_id="a.com", timestamp=FIRST * DAY_US + 5 * HOUR_US),  # erased
            make_event(site_id="b.org", timestamp=FIRST * DAY_US + 5 * HOUR_US),  # other site
            make_event(site_id="a.com", timestamp=FIRST * DAY_US + 70 * HOUR_US),  # after range
        ]
    )
    kept = tombstones.keep(pending)
    assert kept["site_id"].to_pylist() == ["b.org", "a.com"]
    # a second reader (another worker process) sees the same tombstones on disk
    assert Tombstones(layout).current() == tombstones.current()


def test_events_accepted_after_the_erasure_stay(layout: DataLayout) -> None:
    tombstones = Tombstones(layout)
    erased_at = FIRST * DAY_US + 30 * HOUR_US
    tombstones.add(
        Tombstone("a.com", FIRST * DAY_US, (FIRST + 3) * DAY_US, erased_at), layout.tmp / "t"
    )
    table = events_to_table(
        [make_event(site_id="a.com", timestamp=FIRST * DAY_US + h * HOUR_US) for h in (5, 40)]
    )
    assert tombstones.keep(table)["timestamp"].cast("int64").to_pylist() == [
        FIRST * DAY_US + 40 * HOUR_US
    ]


def test_retention_deletes_whole_old_days_everywhere(layout: DataLayout) -> None:
    bots_only = layout.dropped / "site_id=bots.example"  # drop counts, and no event ever
    for day in DAYS[:2]:
        (bots_only / f"date={day}").mkdir(parents=True)
    (layout.dropped / "site_id=a.com" / f"date={DAYS[0] - dt.timedelta(days=9)}").mkdir()
    report = expire(layout, keep_days=2, today=DAYS[2])
    assert report.days == 4  # the first day of both sites, of the bots' site and a.com's older
    assert [day.name for day in bots_only.iterdir()] == [f"date={DAYS[1]}"]
    assert [day.name for day in (layout.dropped / "site_id=a.com").iterdir()] == []
    assert hours(layout, "a.com") == list(range(24, 72))
    assert hours(layout, "b.org") == list(range(24, 72))
    assert not (layout.dropped / "site_id=a.com" / f"date={DAYS[0]}").exists()
    assert not list(layout.visits.glob(f"*/date={DAYS[0]}"))
    assert list(layout.visits.glob(f"*/date={DAYS[1]}/*.parquet"))
    assert expire(layout, keep_days=2, today=DAYS[2]).days == 0
    assert pq.read_table(next(layout.events.glob("site_id=a.com/**/*.parquet"))).num_rows
