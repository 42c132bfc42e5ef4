"""Compaction: many small Parquet files of a day become one sorted file.

Frequent flushes leave a file per flush per site and day; every file costs
every query that reads the day. Compaction merges a day's files into one,
sorted by visitor and time (what visit reconstruction reads in order), in
row groups of ``ROW_GROUP_ROWS``, and writes the day's visits beside it
(``visits/site_id=…/date=…/<same name>.parquet``, see
:func:`mallard.query.sql.rollup_sql`), so visit metrics need not rebuild them.
A day that has one file but no matching rollup (imported, or compacted
before rollups existed) is rewritten the same way. Today is compacted too,
as far as it has come: the files flushed after that are read beside the
merged file, and the visits of their visitors are built again from events
(see :meth:`mallard.query.engine.QueryEngine._snapshot`).

The swap is atomic for readers: queries hold a shared lock on the site
(:func:`~mallard.storage.locks.site_lock`) while they list and read its files,
and compaction takes it exclusively only to rename the merged file in and
delete the old ones; the merged file lists the files it holds
(``MERGED_KEY``), so the next run deletes those a crash left behind. Files
whose write-ahead log segment still exists are left alone, so a replay can
never bring back a file that compaction merged; so are today's and
yesterday's files younger than ``SETTLE_SECONDS``: a query that took the
writer's unflushed events before their flush still finds their file under
its own name (it drops them from the unflushed ones) for as long as a query
may run. A day holding a file that cannot become part of a compacted file
(not Parquet, a column every event needs missing or empty, a column that does
not convert) is left as it is, with a warning naming the file; the others go on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mallard.query.sql import rollup_sql
from mallard.storage.foreign import NOT_EVENTS, read_as_events
from mallard.storage.layout import COMPACTED_PREFIX, DataLayout, is_compacted
from mallard.storage.locks import maintenance_lock, site_lock
from mallard.storage.merged import held_by_compacted, merged_files, merged_metadata
from mallard.storage.pairs import refresh_pairs
from mallard.storage.parquet import fsync_dir, write_aside
from mallard.storage.schema import VISIT_SCHEMA
from mallard.storage.wal import SEGMENT_SUFFIX

log = logging.getLogger("mallard.compaction")

ROW_GROUP_ROWS = 128 * 1024
SETTLE_SECONDS = 120.0  # more than a query may wait and run (QueryEngine's timeout: 30 s)


class UnmergeableFile(ValueError):
    """A file that a compacted file cannot hold; the message names it and says why."""


@dataclass
class CompactionReport:
    partitions: int = 0
    files_in: int = 0
    files_out: int = 0
    rows: int = 0
    pair_days: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # partitions left as they are, and why


def _in_flight(layout: DataLayout, file: Path) -> bool:
    """True while the file's write-ahead log segment exists (it may be replayed)."""
    writer_id, _, batch = file.stem.rpartition("-")
    if not writer_id or not batch.isdigit():
        return False  # not a name Mallard's writer gives: imported, or already compacted
    return (layout.wal / writer_id / f"{batch}{SEGMENT_SUFFIX}").exists()


def _rollup_of(layout: DataLayout, site_id: str, partition: Path, events_file: Path) -> Path:
    date = dt.date.fromisoformat(partition.name.removeprefix("date="))
    return layout.rollup(site_id, date, events_file.name)


def _rolled_up(layout: DataLayout, site_id: str, partition: Path, files: list[Path]) -> bool:
    """True when ``files`` are one compacted file with its visit rollup beside it."""
    return (
        is_compacted([f.name for f in files])
        and _rollup_of(layout, site_id, partition, files[0]).exists()
    )


def _settled(layout: DataLayout, site_id: str, partition: Path) -> bool:
    """True when the day is one compacted file with its visit rollup beside it."""
    return _rolled_up(layout, site_id, partition, list(partition.glob("*.parquet")))


def partitions_to_compact(layout: DataLayout, before: dt.date) -> list[tuple[str, Path]]:
    """(site, partition folder) of every day before ``before`` not yet compacted."""
    found = []
    for site_dir in sorted(layout.events.glob("site_id=*")):
        site_id = site_dir.name.removeprefix("site_id=")
        for partition in sorted(site_dir.glob("date=*")):
            try:
                day = dt.date.fromisoformat(partition.name.removeprefix("date="))
            except ValueError:
                continue
            if day < before and not _settled(layout, site_id, partition):
                found.append((site_id, partition))
    return found


def _visits_of(events: pa.Table) -> pa.Table:
    """The day's visits (``VISIT_SCHEMA``), by the same SQL the queries use."""
    with duckdb.connect(config={"threads": 1}) as connection:
        connection.register("day_events", events)
        visits = connection.sql(rollup_sql("day_events")).to_arrow_table()
    return visits.cast(VISIT_SCHEMA)


def _read_events(files: list[Path]) -> pa.Table:
    """The files as one table of EVENT_SCHEMA; another tool's file is read as queries
    read it (:func:`mallard.query.sql.events_select`)."""
    tables = []
    for file in files:
        try:
            tables.append(read_as_events(file))
        except NOT_EVENTS as error:
            raise UnmergeableFile(f"{file.name}: {error}") from error
    return pa.concat_tables(tables)


def _drop_merged_leftovers(layout: DataLayout, site_id: str, partition: Path) -> None:
    """Delete the files a compacted file of the partition already holds, and rollups of
    no file: what a crash between the swap's rename and its deletions leaves."""
    files = {f.name: f for f in partition.glob("*.parquet")}
    held = held_by_compacted(partition, files, lambda file: merged_files(pq.read_schema(file)))
    leftovers = [files[name] for name in sorted(held)]
    rollups = layout.visits / f"site_id={site_id}" / partition.name
    leftovers += [r for r in rollups.glob("*.parquet") if r.name not in files]
    if leftovers:
        log.warning("removing %d files a crashed compaction left in %s", len(leftovers), partition)
        with site_lock(layout, site_id, exclusive=True):
            for file in leftovers:
                file.unlink()
            fsync_dir(partition)


def compact_partition(
    layout: DataLayout, site_id: str, partition: Path, *, settle: float = 0.0
) -> tuple[int, int]:
    """Merge the partition's files into one, with its visits; returns (files, rows).

    Files still in flight, or flushed less than ``settle`` seconds ago, stay as they are.
    """
    with maintenance_lock(layout, site_id):
        _drop_merged_leftovers(layout, site_id, partition)
        return _merge(layout, site_id, partition, settle)


def _merge(layout: DataLayout, site_id: str, partition: Path, settle: float) -> tuple[int, int]:
    newest = time.time() - settle
    files = sorted(
        f for f in partition.glob("*.parquet")
        if not _in_flight(layout, f)
        and (f.name.startswith(COMPACTED_PREFIX) or f.stat().st_mtime <= newest)
    )  # fmt: skip
    if not files or _rolled_up(layout, site_id, partition, files):
        return 0, 0
    table = _read_events(files).sort_by([("visitor_id", "ascending"), ("timestamp", "ascending")])
    table = table.replace_schema_metadata(merged_metadata(files))
    name = f"{COMPACTED_PREFIX}{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    events_file = partition / f"{name}.parquet"
    rollup_file = _rollup_of(layout, site_id, partition, events_file)
    staging = layout.tmp / f"{name}.parquet.tmp"
    staging_visits = layout.tmp / f"{name}.visits.tmp"
    write_aside(table, staging, row_group_size=ROW_GROUP_ROWS)
    write_aside(_visits_of(table), staging_visits, row_group_size=ROW_GROUP_ROWS)
    rollup_file.parent.mkdir(parents=True, exist_ok=True)
    stale_rollups = list(rollup_file.parent.glob("*.parquet"))
    with site_lock(layout, site_id, exclusive=True):
        os.replace(staging_visits, rollup_file)
        os.replace(staging, events_file)
        for file in files + stale_rollups:
            file.unlink()
        fsync_dir(partition)
        fsync_dir(rollup_file.parent)
    return len(files), table.num_rows


def _remove_abandoned_staging(layout: DataLayout, older_than: float = 3600.0) -> None:
    """Files a crashed compaction or erasure left in tmp/ (never renamed, never read)."""
    leftovers = [*layout.tmp.glob(f"{COMPACTED_PREFIX}*.tmp"), *layout.tmp.glob("erase*.tmp")]
    for leftover in leftovers:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - leftover.stat().st_mtime > older_than:
                leftover.unlink()


def compact(
    layout: DataLayout,
    *,
    before: dt.date | None = None,
    progress: Callable[[int, int], None] | None = None,
    pairs_progress: Callable[[int, int], None] | None = None,
) -> CompactionReport:
    """Compact every day before ``before``, by default every finished day (before today,
    UTC) and today as far as it has come; then bring each site's pairs
    (:mod:`mallard.storage.pairs`) of the days before ``before`` up to date.

    A day is finished once it is over: events are timed by the server. Files
    flushed into it later (a write-ahead log replay, a late flush) make it a
    day to compact again at the next run, as today's new files do. Blocking.
    """
    started = time.perf_counter()
    _remove_abandoned_staging(layout)
    today = dt.datetime.now(dt.UTC).date()
    todo = partitions_to_compact(layout, before or today + dt.timedelta(days=1))
    before = before or today
    report = CompactionReport()
    for index, (site_id, partition) in enumerate(todo, start=1):
        recent = partition.name in (f"date={today}", f"date={today - dt.timedelta(days=1)}")
        settle = SETTLE_SECONDS if recent else 0.0  # the days the writer may be flushing into
        try:
            merged, rows = compact_partition(layout, site_id, partition, settle=settle)
        except UnmergeableFile as error:
            log.warning(
                "cannot compact %s: %s; its files stay as they are", partition, error,
                extra={"partition": str(partition), "error": str(error)},
            )  # fmt: skip
            report.skipped.append(f"{partition}: {error}")
            merged, rows = 0, 0
        if merged:
            report.partitions += 1
            report.files_in += merged
            report.files_out += 1
            report.rows += rows
        if progress:
            progress(index, len(todo))
    for site_dir in sorted(layout.events.glob("site_id=*")):
        site_id = site_dir.name.removeprefix("site_id=")
        report.pair_days += refresh_pairs(layout, site_id, before, progress=pairs_progress)
    report.seconds = time.perf_counter() - started
    if report.partitions or report.pair_days:
        log.info(
            "compacted %d files into %d (%d rows), pairs of %d days, in %.1f s",
            report.files_in,
            report.files_out,
            report.rows,
            report.pair_days,
            report.seconds,
            extra={"files_in": report.files_in, "files_out": report.files_out,
                   "rows": report.rows, "pair_days": report.pair_days,
                   "duration_ms": report.seconds * 1000},
        )  # fmt: skip
    return report
