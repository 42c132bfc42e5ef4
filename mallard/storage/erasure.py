"""Erasure: a site's events in a time range removed from everywhere they live.

Accepted events live in three places: Parquet files (with their day's visit
rollup and pairs), the writers' unflushed tables, and write-ahead log segments that a
restart after a crash would replay. An erasure first records a *tombstone* in
``data_dir/erasures.json``; writers drop tombstoned rows from every batch
before it is written and WAL replay does the same, so nothing accepted before
the erasure can come back. Then the Parquet files of the days in range are
rewritten without the erased rows and all swapped in under the site's
exclusive lock: a query sees the whole erasure or none of it. The pairs of
the first erased day and every later one are dropped too (a later day's pair
may say when an erased pageview happened), and so are the ``seen_*`` values
of later visits that say when an erased visit started; compaction builds
them again. The report counts the rows removed from Parquet and the accepted
ones that will now never be written.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mallard.storage.foreign import NOT_EVENTS, read_as_events
from mallard.storage.layout import DataLayout, dated_partitions, day_number
from mallard.storage.locks import maintenance_lock, site_lock
from mallard.storage.merged import held_by_compacted, merged_files
from mallard.storage.pairs import forget_pairs_from
from mallard.storage.parquet import fsync_dir, split_by_partition, write_aside
from mallard.storage.schema import MICROS_PER_DAY, micros

ERASED_PREFIX = "erased-"  # files an erasure stages in tmp/
log = logging.getLogger("mallard.erasure")


@dataclass(frozen=True)
class Tombstone:
    """Events of ``site_id`` timed in ``[start_us, end_us)`` and accepted before ``erased_us``."""

    site_id: str
    start_us: int
    end_us: int
    erased_us: int
    done: bool = False  # its files are rewritten; until then, each start finishes the job


# accepted events not in Parquet, as the writers hold them: (batch name, site -> table)
Unwritten = Sequence[tuple[str, Callable[[str], pa.Table]]]


@dataclass
class ErasureReport:
    files_rewritten: int = 0
    files_removed: int = 0
    rows_erased: int = 0  # from Parquet files
    unwritten_rows_erased: int = 0  # accepted, not yet in Parquet: never written now
    # files in range that cannot be read as events: the erasure stays unfinished
    files_unreadable: list[str] = field(default_factory=list)
    erased_in: dict[Path, int] = field(default_factory=dict)  # rows erased, by file


class BrokenErasures(Exception):
    """``erasures.json`` is not a list of erasures: nothing may be written until it is."""


class Tombstones:
    """The tombstones on disk, re-read only when the file changes."""

    def __init__(self, layout: DataLayout) -> None:
        self._path = layout.root / "erasures.json"
        self._seen: tuple[int, int] | None = None
        self._tombstones: tuple[Tombstone, ...] = ()

    def current(self) -> tuple[Tombstone, ...]:
        try:
            info = os.stat(self._path)
        except FileNotFoundError:
            return ()
        if (info.st_mtime_ns, info.st_size) != self._seen:
            try:
                entries = json.loads(self._path.read_text())
                self._tombstones = tuple(Tombstone(**entry) for entry in entries)
            except (ValueError, TypeError) as error:  # not JSON, not UTF-8, not erasures
                raise BrokenErasures(
                    f"{self._path} is not a list of erasures ({error}); restore it from a "
                    "backup: events are not written while it cannot be read"
                ) from None
            self._seen = (info.st_mtime_ns, info.st_size)
        return self._tombstones

    def add(self, tombstone: Tombstone, staging: Path) -> None:
        """Append durably."""
        self._update(lambda tombstones: [*tombstones, tombstone], staging)

    def finished(self, tombstone: Tombstone, staging: Path) -> None:
        """Record durably that ``tombstone``'s files are rewritten."""
        done = replace(tombstone, done=True)
        self._update(lambda current: [done if t == tombstone else t for t in current], staging)

    def _update(
        self, change: Callable[[tuple[Tombstone, ...]], list[Tombstone]], staging: Path
    ) -> None:
        """Change the list as it is on disk (one process at a time: workers share it),
        written aside, then renamed over the old one."""
        fd = os.open(self._path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._seen = None  # what another process wrote meanwhile
            entries = [asdict(t) for t in change(self.current())]
            staging.write_text(json.dumps(entries, indent=1) + "\n")
            with open(staging, "rb") as file:
                os.fsync(file.fileno())
            os.replace(staging, self._path)
            fsync_dir(self._path.parent)
        finally:
            os.close(fd)

    def keep(self, table: pa.Table) -> pa.Table:
        """``table`` without the rows any tombstone erases."""
        return _without(table, self.current())


def _without(table: pa.Table, tombstones: tuple[Tombstone, ...]) -> pa.Table:
    return table.filter(pc.invert(erased_mask(table, tombstones))) if tombstones else table


def erased_mask(table: pa.Table, tombstones: tuple[Tombstone, ...]) -> pa.ChunkedArray:
    """True for the rows of ``table`` that a tombstone erases."""
    stamps = table["timestamp"].cast(pa.int64())
    mask = pa.chunked_array([pa.array([False] * table.num_rows, pa.bool_())])
    for tombstone in tombstones:
        hit = pc.and_(pc.equal(table["site_id"], tombstone.site_id), _erases(tombstone, stamps))
        mask = pc.or_(mask, hit)
    return mask


def _erases(tombstone: Tombstone, micros_since_epoch: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where the time is in the tombstone's range (and before the erasure)."""
    return pc.and_(
        pc.greater_equal(micros_since_epoch, tombstone.start_us),
        pc.less(micros_since_epoch, min(tombstone.end_us, tombstone.erased_us)),
    )


def erase(
    layout: DataLayout, tombstones: Tombstones, site_id: str, start: dt.datetime, end: dt.datetime
) -> ErasureReport:
    """Record the tombstone, then remove the rows from the site's Parquet files. Blocking."""
    return carry_out(layout, tombstones, record_erasure(layout, tombstones, site_id, start, end))


def record_erasure(
    layout: DataLayout, tombstones: Tombstones, site_id: str, start: dt.datetime, end: dt.datetime
) -> Tombstone:
    """Record (durably) that the site's events in ``[start, end)`` accepted until now are
    erased: from here on, no writer writes them. Blocking."""
    tombstone = Tombstone(site_id, micros(start), micros(end), time.time_ns() // 1000)
    tombstones.add(tombstone, _staging(layout))
    return tombstone


def carry_out(
    layout: DataLayout,
    tombstones: Tombstones,
    tombstone: Tombstone,
    unwritten: Callable[[], Unwritten] = tuple,
) -> ErasureReport:
    """Remove the recorded ``tombstone``'s rows from the site's Parquet files, and count
    those of the ``unwritten`` events (the writers' unflushed events, taken after the
    tombstone was recorded, erased rows included). Blocking."""
    earlier = tuple(t for t in tombstones.current() if t.erased_us < tombstone.erased_us)

    def not_erased_before() -> Unwritten:  # those an earlier erasure counted already
        return [
            (name, lambda site_id, make=make: _without(make(site_id), earlier))
            for name, make in unwritten()
        ]

    report = _rewrite(layout, tombstone, not_erased_before)
    if not report.files_unreadable:
        tombstones.finished(tombstone, _staging(layout))
    return report


def finish_erasures(layout: DataLayout, tombstones: Tombstones) -> int:
    """Rewrite the files of the erasures a crash cut short (recorded, never marked
    done): their tombstones kept erased events from coming back, but the rows
    already in Parquet stayed. Returns how many there were. Blocking."""
    unfinished = [t for t in tombstones.current() if not t.done]
    for tombstone in unfinished:
        if not _rewrite(layout, tombstone).files_unreadable:
            tombstones.finished(tombstone, _staging(layout))
    return len(unfinished)


def _staging(layout: DataLayout) -> Path:
    return layout.tmp / f"erasures-{uuid.uuid4().hex}.tmp"


def _rewrite(
    layout: DataLayout, tombstone: Tombstone, unwritten: Callable[[], Unwritten] = tuple
) -> ErasureReport:
    """Remove the tombstone's rows from the site's Parquet files, all swapped at once."""
    site_id = tombstone.site_id
    report = ErasureReport()
    with maintenance_lock(layout, site_id):
        seen: set[Path] = set()
        replaced, removed = _rewrite_days(layout, tombstone, report, seen)
        replaced += _clear_seen_of_erased(layout, tombstone, set(removed))
        with site_lock(layout, site_id, exclusive=True):
            # a flush that was under way when the tombstone was written may have landed
            late_replaced, late_removed = _rewrite_days(layout, tombstone, report, seen)
            replaced += late_replaced
            removed += late_removed
            report.unwritten_rows_erased = _never_written(layout, tombstone, unwritten(), report)
            for staging, destination in replaced:
                os.replace(staging, destination)
            for file in removed:
                file.unlink(missing_ok=True)
            for folder in {f.parent for f in removed}:
                fsync_dir(folder)
            if report.rows_erased:
                forget_pairs_from(layout, site_id, tombstone.start_us // MICROS_PER_DAY)
    return report


def _never_written(
    layout: DataLayout, tombstone: Tombstone, unwritten: Unwritten, report: ErasureReport
) -> int:
    """How many of the ``unwritten`` events the tombstone erases that no file had.

    Called under the site's exclusive lock, after the files are read. A batch's
    file for a day holds its rows of the day minus the erased ones (the writers
    filter under the site's lock): all of them when the batch was written before the
    tombstone, and then the rewrite found them in that file; none when it was
    written since, or will be.
    """
    by_name: dict[str, list[pa.Table]] = {}
    for name, make_table in unwritten:
        by_name.setdefault(name, []).append(make_table(tombstone.site_id))
    count = 0
    for name, tables in by_name.items():
        table = pa.concat_tables(tables)
        erased = table.filter(erased_mask(table, (tombstone,)))
        for site_id, day, rows in split_by_partition(erased):
            found = report.erased_in.get(layout.partition(site_id, day) / f"{name}.parquet", 0)
            count += max(rows.num_rows - found, 0)
    return count


def _clear_seen_of_erased(
    layout: DataLayout, tombstone: Tombstone, removed: set[Path]
) -> list[tuple[Path, Path]]:
    """Stage, cleared, the ``seen_*`` values of visits that point into the erased range.

    A visit's ``seen_visitor`` is when the visitor's previous visit started,
    and each ``seen_gap_*`` leads to an earlier one: when that visit was
    erased, its time goes too. Nothing reads the cleared values meanwhile:
    seen columns count only where the pairs are current, and the pairs from the
    first erased day on are dropped. Returns (staged file -> destination).
    """
    replaced: list[tuple[Path, Path]] = []
    first = tombstone.start_us // MICROS_PER_DAY
    for date, folder in dated_partitions(layout.visits / f"site_id={tombstone.site_id}"):
        if day_number(date) < first:  # its visits and their previous ones are older
            continue
        for file in sorted(Path(folder).glob("*.parquet")):
            if file in removed or "seen_visitor" not in pq.read_schema(file).names:
                continue
            visits = pq.read_table(file, partitioning=None)
            previous = visits["seen_visitor"].cast(pa.int64())
            times = [previous] + [
                pc.subtract(previous, visits[name])
                for name in visits.column_names
                if name.startswith("seen_gap_")
            ]
            erased = functools.reduce(
                pc.or_, (pc.fill_null(_erases(tombstone, t), False) for t in times)
            )
            if not pc.any(erased).as_py():
                continue
            for index, name in enumerate(visits.column_names):
                if name.startswith("seen_"):
                    column = visits[name]
                    cleared = pc.if_else(erased, pa.scalar(None, column.type), column)
                    visits = visits.set_column(index, visits.field(index), cleared)
            staging = layout.tmp / f"{ERASED_PREFIX}{uuid.uuid4().hex}.visits.tmp"
            write_aside(visits, staging)
            replaced.append((staging, file))
    return replaced


def _rewrite_days(
    layout: DataLayout, tombstone: Tombstone, report: ErasureReport, seen: set[Path]
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Stage the remaining rows of each touched file not in ``seen`` (which grows).

    Returns (staged file -> destination, files to remove).
    """
    replaced: list[tuple[Path, Path]] = []
    removed: list[Path] = []
    site_dir = layout.events / f"site_id={tombstone.site_id}"
    first, last = tombstone.start_us // MICROS_PER_DAY, (tombstone.end_us - 1) // MICROS_PER_DAY
    for date, folder in dated_partitions(site_dir):  # the days there are, not every day
        if not first <= day_number(date) <= last:
            continue
        partition = Path(folder)
        files = {file.name: file for file in partition.glob("*.parquet")}
        held = held_by_compacted(partition, files, lambda f: merged_files(pq.read_schema(f)))
        removed += [files[name] for name in held]  # a crashed compaction's: counted already
        touched = False
        for file in sorted(set(files.values()) - seen - set(removed)):
            seen.add(file)
            try:  # another tool's file as compaction reads it: its times in microseconds
                table = read_as_events(file)
            except NOT_EVENTS as error:
                log.error("cannot erase from %s: %s", file, error, extra={"path": str(file)})
                report.files_unreadable.append(f"{partition.name}/{file.name}")
                continue
            # every row of the site's folder is the site's, whatever a file says
            erased = _erases(tombstone, table["timestamp"].cast(pa.int64()))
            count = pc.sum(erased).as_py() or 0
            if not count:
                continue
            report.rows_erased += count
            report.erased_in[file] = count
            touched = True
            rest = table.filter(pc.invert(erased))
            if rest.num_rows:
                # Under its own name: a crash amid the swap leaves each file old or new,
                # never both, and a write-ahead log replay still knows it is written.
                staging = layout.tmp / f"{ERASED_PREFIX}{uuid.uuid4().hex}.parquet.tmp"
                write_aside(rest, staging)
                replaced.append((staging, file))
                report.files_rewritten += 1
            else:
                removed.append(file)
                report.files_removed += 1
        if touched:  # the day's visit rollup no longer matches: compaction writes a new one
            # (listed again by a second pass: unlinking twice is harmless)
            removed += list((layout.visits / site_dir.name / partition.name).glob("*.parquet"))
    return replaced, removed
