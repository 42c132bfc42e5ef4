"""Where things live under ``data_dir``: the only module that builds those paths."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EPOCH = dt.date(1970, 1, 1)
COMPACTED_PREFIX = "compacted-"  # the name of a day's file after compaction


def day_to_date(day: int) -> dt.date:
    return EPOCH + dt.timedelta(days=day)


def day_number(date: dt.date) -> int:
    """The UTC day number of ``date`` (days since the epoch), as files and rollups key days."""
    return (date - EPOCH).days


def dated_partitions(site_dir: Path) -> Iterator[tuple[dt.date, str]]:
    """(date, path) of every ``date=YYYY-MM-DD`` folder of a site (none when it has none)."""
    try:
        entries = os.scandir(site_dir)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            try:
                date = dt.date.fromisoformat(entry.name.removeprefix("date="))
            except ValueError:
                continue
            if entry.is_dir():
                yield date, entry.path


@dataclass(frozen=True)
class DataLayout:
    """The folders below ``data_dir``: events (Hive-partitioned Parquet), visits, WAL, keys, tmp."""

    root: Path

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def visits(self) -> Path:
        """Visit rollups: one file per compacted day, named after its events file."""
        return self.root / "visits"

    def rollup(self, site_id: str, date: dt.date, events_name: str) -> Path:
        """The visit rollup of the day's events file ``events_name``."""
        return self.visits / f"site_id={site_id}" / f"date={date.isoformat()}" / events_name

    @property
    def pairs(self) -> Path:
        """Per compacted day, its (page or event name, visitor) pairs (mallard.storage.pairs)."""
        return self.root / "pairs"

    @property
    def steps(self) -> Path:
        """Per compacted day, its events as funnel steps, built with the pairs."""
        return self.root / "steps"

    @property
    def dropped(self) -> Path:
        """Counts of the events ingestion dropped, by site, day, reason (and bot)."""
        return self.root / "dropped"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def wal(self) -> Path:
        """Write-ahead logs: one folder per writer process."""
        return self.root / "wal"

    @property
    def tmp(self) -> Path:
        """Files are written here first and renamed into place when complete."""
        return self.root / "tmp"

    def spill_folder(self, pid: int) -> Path:
        """Where process ``pid``'s queries spill (made by DuckDB when it needs it)."""
        return self.tmp / f"duckdb-{pid}"

    def export_folder(self, pid: int) -> Path:
        """Where process ``pid``'s exports put their sorted rows while clients read them."""
        return self.tmp / f"export-{pid}"

    @property
    def events_glob(self) -> str:
        """What DuckDB reads: every event file, partitions included."""
        return str(self.events / "**" / "*.parquet")

    def partition(self, site_id: str, day: int) -> Path:
        return self.events / f"site_id={site_id}" / f"date={day_to_date(day).isoformat()}"

    def create(self) -> None:
        for folder in (self.events, self.wal, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(parents=True, exist_ok=True, mode=0o700)


def is_compacted(names: list[str]) -> bool:
    """True when a day's event files (``names``) are one compacted file."""
    return len(names) == 1 and names[0].startswith(COMPACTED_PREFIX)


def new_writer_id() -> str:
    """Names one writer (one process run): sorts by start time, never collides.

    Parquet files are named ``<writer id>-<batch number>.parquet``, so a file's
    name says which write-ahead log segment it came from.
    """
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def batch_name(writer_id: str, batch: int) -> str:
    return f"{writer_id}-{batch:08d}"


def running(pid: int) -> bool:
    """True while process ``pid`` exists (somebody else's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_process_folders(base: Path, prefix: str = "") -> None:
    """Remove the folders ``base/<prefix><pid>`` whose process no longer runs."""
    for folder in base.glob(f"{prefix}*"):
        pid = folder.name.removeprefix(prefix)
        if not (pid.isdigit() and running(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
