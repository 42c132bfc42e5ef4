"""The write-ahead log: every accepted event is on disk before its 202.

Each writer (one server process) owns a folder ``wal/<writer id>/`` holding a
``lock`` file it keeps locked while it runs, and numbered segments. Segment N
holds exactly the events of Parquet batch N: when batch N's Parquet files are
in place, segment N is deleted. A segment is a sequence of records::

    u32 payload length | u32 CRC-32 of payload | payload (JSON array of events)

one record per group commit, appended and fsynced before any handler whose
event it holds is answered. A torn or corrupt record ends the segment: the
records before it are intact, and the bad tail was never acknowledged.

Recovery replays the segments of every writer whose lock is free (a process
that stopped or died), writing the Parquet files a batch lacks. Parquet files
are named after their segment and appear atomically, so replay skips files
that already exist: whatever step a crash interrupted, each event reaches
Parquet exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO

import msgspec

from mallard.storage.erasure import Tombstones
from mallard.storage.layout import DataLayout, batch_name
from mallard.storage.parquet import fsync_dir, write_batch
from mallard.storage.schema import Event, events_to_table

log = logging.getLogger("mallard.wal")

HEADER = struct.Struct("<II")
SEGMENT_SUFFIX = ".wal"
REVENUE_INDEX = Event._fields.index("revenue_amount")


def encode_events(events: Sequence[Event]) -> bytes:
    """One record's payload: the events as a compact JSON array of arrays (amounts as text)."""
    return msgspec.json.encode(events)


def decode_events(payload: bytes) -> list[Event]:
    events = []
    for fields in msgspec.json.decode(payload):
        revenue = fields[REVENUE_INDEX]
        if revenue is not None:
            fields[REVENUE_INDEX] = Decimal(revenue)
        events.append(Event(*fields))
    return events


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class SegmentContents:
    events: list[Event]
    records: int
    bad_tail: str | None = None  # what was wrong after the last good record


def read_segment(path: Path) -> SegmentContents:
    """Every intact record of a segment; stops at the first torn or corrupt one."""
    data = path.read_bytes()
    contents = SegmentContents([], 0)
    offset = 0
    while offset < len(data):
        if offset + HEADER.size > len(data):
            contents.bad_tail = f"torn header at byte {offset}"
            break
        length, checksum = HEADER.unpack_from(data, offset)
        payload = data[offset + HEADER.size : offset + HEADER.size + length]
        if len(payload) < length:
            contents.bad_tail = f"torn record at byte {offset}"
            break
        if zlib.crc32(payload) != checksum:
            contents.bad_tail = f"checksum mismatch at byte {offset}"
            break
        try:
            contents.events.extend(decode_events(payload))
        except (ValueError, TypeError) as error:
            contents.bad_tail = f"undecodable record at byte {offset}: {error}"
            break
        contents.records += 1
        offset += HEADER.size + length
    return contents


STARTING_SECONDS = 60.0  # a writer locks its folder within this of making it
PROBE_NAME = "probe.tmp"  # not a segment: replay reads only *SEGMENT_SUFFIX
PROBE_BYTES = 4096


class WriteAheadLog:
    """One writer's log: its locked folder and its current segment."""

    def __init__(self, layout: DataLayout, writer_id: str) -> None:
        # Locked before it gets its real name, so recovery in another process
        # never mistakes a starting writer for a dead one.
        starting = layout.wal / f".{writer_id}"
        starting.mkdir(parents=True)
        lock = _lock(starting / "lock")
        assert lock is not None, "nobody else knows this folder yet"
        self._lock = lock
        self.folder = layout.wal / writer_id
        starting.rename(self.folder)
        fsync_dir(layout.wal)
        self._segment: IO[bytes] | None = None
        self._segment_number = -1
        self._good_size = 0
        # append (the collector's thread) and retire (the flusher's) must not interleave
        self._mutex = threading.Lock()

    def segment_path(self, number: int) -> Path:
        return self.folder / f"{number:08d}{SEGMENT_SUFFIX}"

    def probe(self) -> None:
        """Write, fsync and delete a page in the log's folder (blocking): raises the
        ``OSError`` an append would meet, such as a full disk."""
        path = self.folder / PROBE_NAME
        try:
            with open(path, "wb") as file:
                file.write(bytes(PROBE_BYTES))
                file.flush()
                os.fsync(file.fileno())
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def append(self, number: int, events: Sequence[Event]) -> float:
        """Append one record to segment ``number`` and fsync it (blocking: run in a thread).

        Returns the seconds the fsync took. On failure the segment is cut back
        to its last good record, so a later append never follows garbage.
        """
        record = frame(encode_events(events))
        with self._mutex:
            if self._segment_number != number:
                self._open(number)
            assert self._segment is not None
            try:
                self._segment.write(record)
                self._segment.flush()
                started = time.perf_counter()
                os.fsync(self._segment.fileno())
                fsync_seconds = time.perf_counter() - started
            except OSError:
                self._truncate_to_good_size()
                raise
            self._good_size += len(record)
        return fsync_seconds

    def _open(self, number: int) -> None:
        self.close_segment()
        path = self.segment_path(number)
        self._segment = open(path, "ab")  # noqa: SIM115 - kept open across appends
        self._segment_number = number
        self._good_size = self._segment.tell()
        fsync_dir(self.folder)

    def _truncate_to_good_size(self) -> None:
        path = self.segment_path(self._segment_number)
        segment, self._segment, self._segment_number = self._segment, None, -1
        assert segment is not None
        with contextlib.suppress(OSError):  # what failed to reach the file is cut off below
            segment.close()
        try:
            os.truncate(path, self._good_size)
        except OSError as error:
            log.error("cannot cut a failed write off %s: %s", path, error)

    def retire(self, number: int) -> None:
        """Segment ``number`` is in Parquet: delete it (blocking)."""
        with self._mutex:
            if self._segment_number == number:
                self.close_segment()
            self.segment_path(number).unlink(missing_ok=True)

    def close_segment(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment, self._segment_number = None, -1

    def close(self) -> None:
        """Stop writing; the folder goes when it holds no segment any more."""
        self.close_segment()
        if not any(self.folder.glob(f"*{SEGMENT_SUFFIX}")):
            shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._lock)


def _lock(path: Path, *, create: bool = True) -> int | None:
    """An exclusive lock held until the process ends; None if someone holds it."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass
class RecoveryReport:
    writers: int = 0
    segments: int = 0
    events: int = 0
    files: int = 0
    seconds: float = 0.0


def logged_by_others(layout: DataLayout, writer_id: str) -> list[tuple[str, list[Event]]]:
    """The events in every other writer's log (other worker processes of the data dir),
    each segment's under the name its batch's files will have: accepted, and maybe
    not in Parquet yet. A segment flushed and retired meanwhile is skipped (its files
    are there); a record being appended is not read yet. Blocking."""
    logged = []
    with contextlib.suppress(FileNotFoundError), os.scandir(layout.wal) as folders:
        for folder in folders:
            if not folder.is_dir() or folder.name.startswith(".") or folder.name == writer_id:
                continue
            for segment in sorted(Path(folder.path).glob(f"*{SEGMENT_SUFFIX}")):
                with contextlib.suppress(FileNotFoundError):
                    events = read_segment(segment).events
                    logged.append((batch_name(folder.name, int(segment.stem)), events))
    return logged


def _orphaned_writers(layout: DataLayout) -> Iterator[tuple[Path, int]]:
    """WAL folders whose writer is gone, each with its lock now held by us.

    Another process may recover the same folders at the same time (workers
    starting together): a folder it removed meanwhile is skipped. A folder
    still named ``.<writer id>`` a minute after it was made, with its lock
    free or without one, belongs to a writer that died while starting, before
    it logged anything: it is removed.
    """
    if not layout.wal.exists():
        return
    for folder in sorted(layout.wal.iterdir()):
        starting = folder.name.startswith(".")
        with contextlib.suppress(FileNotFoundError):
            if starting and time.time() - folder.stat().st_mtime < STARTING_SECONDS:
                continue  # made just now: its writer may not have locked it yet
        try:
            lock = _lock(folder / "lock", create=False)  # made again, it would stop a removal
        except (FileNotFoundError, NotADirectoryError):  # removed meanwhile, or not a folder
            if starting and folder.is_dir() and not (folder / "lock").exists():
                shutil.rmtree(folder, ignore_errors=True)  # its writer died before locking it
            continue
        if lock is None:
            continue
        if not (folder / "lock").exists():  # recovered and removed while we waited
            os.close(lock)
        elif starting:
            shutil.rmtree(folder, ignore_errors=True)
            os.close(lock)
        else:
            yield folder, lock


def recover(layout: DataLayout, tombstones: Tombstones | None = None) -> RecoveryReport:
    """Replay the segments of stopped or crashed writers into Parquet (blocking).

    Events erased since they were logged (``tombstones``) are left out.
    """
    keep = (tombstones or Tombstones(layout)).keep
    started = time.perf_counter()
    report = RecoveryReport()
    for folder, lock in _orphaned_writers(layout):
        try:
            report.writers += 1
            writer_id = folder.name
            for segment in sorted(folder.glob(f"*{SEGMENT_SUFFIX}")):
                contents = read_segment(segment)
                if contents.bad_tail:
                    log.warning(
                        "WAL segment %s: %s; the %d records before it are recovered",
                        segment,
                        contents.bad_tail,
                        contents.records,
                        extra={"segment": str(segment), "records": contents.records},
                    )
                name = batch_name(writer_id, int(segment.stem))
                table = events_to_table(contents.events)
                report.files += len(write_batch(table, layout, name, keep=keep))
                report.events += len(contents.events)
                report.segments += 1
                segment.unlink()
            _remove_staging_files(layout, writer_id)
            shutil.rmtree(folder)
        finally:
            os.close(lock)
    report.seconds = time.perf_counter() - started
    return report


def _remove_staging_files(layout: DataLayout, writer_id: str) -> None:
    for leftover in layout.tmp.glob(f"{writer_id}-*"):
        leftover.unlink(missing_ok=True)
