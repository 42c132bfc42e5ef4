"""DuckDB over the event files, run in worker threads so the event loop stays free.

Each query gets its own cursor on one shared in-memory database, and a
``source`` relation made of exactly the Parquet files of its site and dates
(partition pruning by path, before DuckDB opens anything) plus the events the
server accepted but has not flushed yet, so a query sent after a 202 sees that
event. No DuckDB extension is ever downloaded: only what ships in the wheel.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import trio

from mallard.query.sql import Derived, events_select, file_list
from mallard.query.threads import (
    Handoff,
    MemoryGate,
    QueryThreads,
    lower_priority,
    thread_ids,
)
from mallard.storage.layout import (
    COMPACTED_PREFIX,
    DataLayout,
    dated_partitions,
    day_number,
    remove_dead_process_folders,
)
from mallard.storage.locks import site_lock
from mallard.storage.merged import held_by_compacted, merged_files
from mallard.storage.pairs import (
    PairManifest,
    manifest_path,
    pair_file,
    read_manifest,
    rolled_pair_days,
    step_file,
)
from mallard.storage.schema import (
    MICROS_PER_DAY,
    PAIR_SCHEMA,
    VISIT_SCHEMA,
    events_to_table,
    is_event_schema,
    micros,
    unconvertible,
)

# The writer's unflushed events: (name its batch's files will have, make its table
# given the site a query reads: at least that site's events).
PendingParts = Sequence[tuple[str, Callable[[str], pa.Table]]]
PendingEvents = Callable[[], PendingParts]
log = logging.getLogger(__name__)
T = TypeVar("T")

CLOSE_WAIT = 5.0  # seconds close() waits for interrupted queries to stop
PING_TIMEOUT = 5.0  # seconds a health check waits for DuckDB
TOO_LARGE_AGAIN = 300.0  # seconds a query too large even alone is refused at once
EMPTY_EVENTS = events_to_table([])
EMPTY_VISITS = VISIT_SCHEMA.empty_table()
EMPTY_PAIRS = PAIR_SCHEMA.empty_table()
UNSEEN_VISIT_COLUMNS = [n for n in VISIT_SCHEMA.names if not n.startswith("seen_")]


@dataclasses.dataclass
class Snapshot:
    """What a query reads: event files, and by day number the visit rollups of the
    range's whole days and the derived files read instead of some days' events."""

    files: list[str] = dataclasses.field(default_factory=list)
    rollups: dict[int, str] = dataclasses.field(default_factory=dict)
    compacted: dict[int, str] = dataclasses.field(default_factory=dict)  # day -> compacted file
    partial: set[int] = dataclasses.field(default_factory=set)  # rollup days with newer events
    rolled: dict[int, str] = dataclasses.field(default_factory=dict)
    written: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # name -> days
    file_days: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> day
    day_names: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # day -> names
    pairs_since: int | None = None  # pairs know no occurrence before this day
    foreign: dict[str, pa.Schema] = dataclasses.field(default_factory=dict)  # other shapes

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever a file is added, removed or rewritten."""
        stats = []
        for path in self.files:
            try:
                info = os.stat(path)
            except FileNotFoundError:  # gone meanwhile: this snapshot is stale anyway
                return (object(),)
            stats.append((path, info.st_size, info.st_mtime_ns))
        return tuple(stats), tuple(sorted(self.rolled.items()))


class UnreadableFile(Exception):
    """An event file that is not Parquet, or not of events: no query over its day can run."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _shape(path: str) -> tuple[pa.Schema | None, list[list[Any]]]:
    """The file's schema if it is not exactly ``EVENT_SCHEMA`` (else None), and the
    files it holds if it is a compacted file."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise UnreadableFile(path, str(error)) from error
    if is_event_schema(schema):
        return None, merged_files(schema)
    if reason := unconvertible(schema):
        raise UnreadableFile(path, reason)
    return schema, merged_files(schema)


class FileShapes:
    """Which event files are not exactly of ``EVENT_SCHEMA``, remembered per file version.

    DuckDB reads a list of files of that schema with the schema of the first.
    A file of another shape (another tool's, an older Mallard's) is read on
    its own, each column cast as compaction will write it. (DuckDB's
    ``union_by_name`` would do without, but its bind reads every file's
    footer holding the GIL: 5 ms per bind over 91 files, while the event loop
    waits; 1.4 ms and no wait without it.) Mallard writes only files of its
    own shape.
    """

    LIMIT = 10_000  # files remembered; beyond, only those of the latest query are kept

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int, int], pa.Schema | None, list[Any]]] = {}
        self._lock = threading.Lock()

    def _shape(self, path: str) -> tuple[pa.Schema | None, list[list[Any]]]:
        try:
            info = os.stat(path)
        except FileNotFoundError as error:
            raise UnreadableFile(path, "it is gone") from error
        version = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            known = self._known.get(path)
        if known is None or known[0] != version:
            known = (version, *_shape(path))
            with self._lock:
                self._known[path] = known
        return known[1], known[2]

    def merged(self, path: os.PathLike[str]) -> list[list[Any]]:
        """The files the compacted file ``path`` holds (see ``merged_files``)."""
        return self._shape(os.fspath(path))[1]

    def foreign(self, paths: list[str]) -> dict[str, pa.Schema]:
        """The schemas of the ``paths`` not exactly of ``EVENT_SCHEMA``; raises
        ``UnreadableFile`` for one that is not Parquet or has a column that does not
        convert (see :func:`mallard.storage.schema.unconvertible`)."""
        found = {}
        for path in paths:
            schema = self._shape(path)[0]
            if schema is not None:
                found[path] = schema
        with self._lock:
            if len(self._known) > self.LIMIT:
                self._known = {p: self._known[p] for p in paths if p in self._known}
        return found


class ResultCache:
    """Answers of recent queries, keyed by the SQL and the exact data it read.

    The key holds every file's size and modification time and the number of
    unflushed events the query saw, so any write in between (a new event, a
    flush, a compaction) makes a different key: a cached answer is never older
    than the data. Least recently used answers go first.
    """

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._answers: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
                self.hits += 1
            return answer

    def put(self, key: Any, answer: Any) -> None:
        if self._entries <= 0:
            return
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self._entries:
                self._answers.popitem(last=False)


def _day_start(day: int) -> str:
    """SQL for the start of UTC day number ``day``."""
    return f"to_timestamp({day * 86400})"


def _parquet_view(
    cursor: duckdb.DuckDBPyConnection,
    name: str,
    files: dict[int, str],
    columns: list[str],
    empty: pa.Table,
    partial: Collection[int] = (),
) -> None:
    """View ``name``: ``columns`` of the Parquet ``files`` (by day), or ``empty`` without any.

    On the ``partial`` days (visit rollups), the visits of ``touched`` visitors are left out.
    """
    if not files:
        cursor.register(name, empty)
        return
    selected = ", ".join(columns)
    whole = [path for day, path in files.items() if day not in partial]
    parts = [f"SELECT {selected} FROM read_parquet({file_list(whole)})"] if whole else []
    if some := [path for day, path in files.items() if day in partial]:
        parts.append(
            f"SELECT {selected} FROM read_parquet({file_list(some)}) AS v ANTI JOIN touched AS t "
            f"ON v.visitor_id = t.visitor_id AND {_day('v.visit_start')} = t.day"
        )
    cursor.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {' UNION ALL '.join(parts)}")


def _read_events(files: list[str], foreign: dict[str, pa.Schema]) -> str:
    """SQL selecting the events of ``files``: those of ``EVENT_SCHEMA`` together, each
    ``foreign`` one on its own, cast to it (columns it lacks are nulls)."""
    parts = []
    if own := [f for f in files if f not in foreign]:
        parts.append(f"SELECT * EXCLUDE (date) FROM {_parquet(own)}")
    for path in (f for f in files if f in foreign):
        parts.append(f"SELECT {events_select(foreign[path])} FROM {_parquet([path])}")
    return " UNION ALL BY NAME ".join(parts)


def _parquet(paths: list[str]) -> str:
    return f"read_parquet({file_list(paths)}, hive_partitioning = true)"


def _events_view(
    cursor: duckdb.DuckDBPyConnection,
    name: str,
    files: list[str],
    foreign: dict[str, pa.Schema],
    touched_in: Sequence[str] = (),
) -> None:
    """View ``name``: the events of ``files``, the registered ``pending_events``, and
    those of ``touched_in`` (compacted files) whose visitor is ``touched`` that day."""
    parts = [_read_events(files, foreign)] if files else []
    parts.append("SELECT * FROM pending_events")
    if touched_in:
        parts.append(
            f"SELECT * FROM ({_read_events(touched_in, foreign)}) AS e SEMI JOIN touched AS t "
            f"ON e.visitor_id = t.visitor_id AND {_day('e.timestamp')} = t.day"
        )
    cursor.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {' UNION ALL BY NAME '.join(parts)}")


def _day(timestamp: str) -> str:
    """SQL for the UTC day number of ``timestamp``."""
    return f"epoch_us({timestamp}) // {MICROS_PER_DAY}"


def _duckdb_batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The batches of a DuckDB result's Arrow stream, which reports DuckDB running out
    of memory as an ``OSError``: raised here as DuckDB's own exception again."""
    try:
        yield from reader
    except OSError as error:
        if str(error).startswith("Out of Memory Error"):
            raise duckdb.OutOfMemoryException(str(error)) from error
        raise


class Abandoned(Exception):
    """Nobody waits for this query's answer any more (raised in its thread)."""


def _stop_if(abandoned: Callable[[], bool]) -> None:
    if abandoned():
        raise Abandoned


class QueryTimeout(Exception):
    """A query ran longer than the engine allows and was interrupted."""


class QueryTooLarge(Exception):
    """A query needs more memory than DuckDB may use, even with no other query running."""


class QueryEngine:
    """Runs SQL over a site's events; at most ``max_concurrent`` queries at once.

    One query per core at a time, each with DuckDB's threads, in low-priority
    threads (:mod:`mallard.query.threads`): a dashboard's queries queue for the
    cores rather than crowd out ingestion, whose event loop keeps its share.
    DuckDB holds at most ``memory_mb`` MiB; a query that needs more spills to
    ``tmp/duckdb-<pid>``, and one that still runs out (what some operators
    hold cannot spill) runs again once the others are done.
    """

    def __init__(
        self,
        layout: DataLayout,
        *,
        pending: PendingEvents = tuple,
        pending_sites: Callable[[], set[str]] = set,
        logged_elsewhere: PendingEvents = tuple,
        max_concurrent: int = max(os.cpu_count() or 1, 1),
        timeout: float = 30.0,
        memory_mb: int = 400,
        cache_entries: int = 256,
    ) -> None:
        self.layout = layout
        self._pending = pending
        self._pending_sites = pending_sites
        self._logged_elsewhere = logged_elsewhere
        self._timeout = timeout
        for prefix in ("duckdb-", "export-"):  # spills and exports of finished runs
            remove_dead_process_folders(layout.tmp, prefix)
        threads_before = thread_ids()
        self._database = duckdb.connect(
            ":memory:",
            config={
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "memory_limit": f"{memory_mb}MiB",
                "temp_directory": str(layout.spill_folder(os.getpid())),
                "threads": max(os.cpu_count() or 1, 1),
            },
        )
        lower_priority(thread_ids() - threads_before)  # DuckDB's own pool
        self._lock = threading.Lock()
        self._threads = QueryThreads(max_concurrent)
        self._memory = MemoryGate()
        self._memory_mb = memory_mb
        self.cache = ResultCache(cache_entries)
        self._too_large = ResultCache(cache_entries)  # when each query last was
        self._manifests: dict[str, tuple[Any, PairManifest]] = {}
        self._shapes = FileShapes()

    @property
    def memory_mb(self) -> int:
        """The MiB a query may hold (``query_memory_mb``)."""
        return self._memory_mb

    # --- which data a query reads ---

    def _view(
        self,
        site_id: str,
        start: dt.datetime,
        end: dt.datetime,
        parts: PendingParts,
        *,
        derived: Derived = None,
    ) -> tuple[Snapshot, pa.Table]:
        """What a query reads: the files, and the unflushed events not written meanwhile.

        The writer's tables were taken before the files are listed (under the
        site lock), and so are the events other processes' writers logged, so a
        batch flushed in between is in both: its rows are dropped from the
        unflushed ones for every day whose file is listed.
        A day with unflushed events has no current pairs, and its visit rollup
        is partial (see :meth:`_snapshot`). ``derived`` names the derived files
        listed in ``rolled``: every visit rollup; the pairs (or the funnel
        steps) of the days where they are current; or the visit rollups of those
        days (their ``seen_*`` columns are current with the pairs), up to the
        first day without one.
        """
        parts = [*parts, *self._logged_elsewhere()]
        snapshot = self._snapshot(site_id, start, end)
        pending = self._pending_rows(parts, snapshot, site_id, start, end)
        busy: set[int] = set()
        if pending.num_rows and derived:
            days = pc.divide(pending["timestamp"].cast(pa.int64()), MICROS_PER_DAY)
            busy = set(pc.unique(days).to_pylist())
            snapshot.partial |= busy & snapshot.rollups.keys()
        if derived == "visits":
            snapshot.rolled = snapshot.rollups
        elif derived:
            manifest = self._manifest(site_id)
            for day in rolled_pair_days(
                manifest, snapshot.day_names, busy, micros(start), micros(end)
            ):
                if derived == "pairs":
                    path = str(pair_file(self.layout, site_id, day, manifest.days[day]))
                elif derived == "steps":
                    path = str(step_file(self.layout, site_id, day, manifest.days[day]))
                    if not os.path.exists(path):
                        break  # deleted: the next compaction writes it again
                elif (path := snapshot.rollups.get(day)) is None:
                    break  # the days read must be consecutive
                snapshot.rolled[day] = path
            snapshot.pairs_since = manifest.since
        return snapshot, pending

    def _manifest(self, site_id: str) -> PairManifest:
        """The site's pair manifest, read again only when its file changed."""
        path = manifest_path(self.layout, site_id)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return PairManifest()
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        cached = self._manifests.get(site_id)
        if cached is None or cached[0] != version:
            cached = self._manifests[site_id] = (version, read_manifest(path))
        return cached[1]

    def _snapshot(self, site_id: str, start: dt.datetime, end: dt.datetime) -> Snapshot:
        """The range's event files, and the visit rollups of its wholly covered days.

        A rollup holds the visits of the day's compacted file of the same name.
        Files flushed or imported into the day since (today's, until the next
        compaction) make it partial: the visits of the visitors those files
        (or unflushed events) have are built again from all their events of
        the day, and the rollup gives everyone else's.
        """
        site_dir = self.layout.events / f"site_id={site_id}"
        first, last = start.date(), (end - dt.timedelta(microseconds=1)).date()
        snapshot = Snapshot()
        for day, folder in dated_partitions(site_dir):
            if not first <= day <= last:
                continue
            names = [n for n in os.listdir(folder) if n.endswith(".parquet")]
            if held := held_by_compacted(Path(folder), names, self._shapes.merged):
                names = [n for n in names if n not in held]  # until compaction deletes them
            number = day_number(day)
            for name in names:
                path = os.path.join(folder, name)
                snapshot.files.append(path)
                snapshot.file_days[path] = number
                snapshot.written.setdefault(name.removesuffix(".parquet"), set()).add(number)
            if names:
                snapshot.day_names[number] = names
            day_start = dt.datetime.combine(day, dt.time(), dt.UTC)
            compacted = [n for n in names if n.startswith(COMPACTED_PREFIX)]
            if start <= day_start and day_start + dt.timedelta(days=1) <= end and compacted:
                rollup = self.layout.rollup(site_id, day, compacted[0])
                if len(compacted) == 1 and rollup.exists():
                    snapshot.rollups[number] = str(rollup)
                    snapshot.compacted[number] = os.path.join(folder, compacted[0])
                    if len(names) > 1:
                        snapshot.partial.add(number)
        snapshot.files.sort()
        snapshot.foreign = self._shapes.foreign(snapshot.files)
        return snapshot

    def site_ids(self) -> set[str]:
        """Every site with a partition folder of events or with unflushed events."""
        sites = self._pending_sites()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.layout.events) as entries:
            sites |= {
                e.name.removeprefix("site_id=") for e in entries if e.name.startswith("site_id=")
            }
        return sites

    def first_day(self, site_id: str) -> dt.date | None:
        """The UTC date of the site's oldest partition (None without data)."""
        site_dir = self.layout.events / f"site_id={site_id}"
        return min((day for day, _ in dated_partitions(site_dir)), default=None)

    @staticmethod
    def _pending_rows(
        parts: PendingParts,
        snapshot: Snapshot,
        site_id: str,
        start: dt.datetime,
        end: dt.datetime,
    ) -> pa.Table:
        """The unflushed events of the site in ``[start, end)`` that no listed file holds."""
        by_name: dict[str, list[pa.Table]] = {}
        for name, make_table in parts:
            by_name.setdefault(name, []).append(make_table(site_id))
        selected = []
        for name, tables in by_name.items():
            table = pa.concat_tables(tables)
            stamps = table["timestamp"].cast(pa.int64())
            mask = pc.and_(
                pc.equal(table["site_id"], site_id),
                pc.and_(
                    pc.greater_equal(stamps, micros(start)),
                    pc.less(stamps, micros(end)),
                ),
            )
            if written := snapshot.written.get(name):
                days = pc.divide(stamps, MICROS_PER_DAY)
                mask = pc.and_(mask, pc.invert(pc.is_in(days, pa.array(sorted(written)))))
            selected.append(table.filter(mask))
        return pa.concat_tables(selected) if selected else EMPTY_EVENTS

    # --- running ---

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._database.cursor()

    @staticmethod
    def _prepare_source(
        cursor: duckdb.DuckDBPyConnection,
        snapshot: Snapshot,
        pending: pa.Table,
        *,
        derived: Derived = None,
    ) -> None:
        """Bind ``source`` (not read with pairs, steps or ``seen_*`` columns); with
        ``derived`` also ``fresh_source``, and ``rolled_visits`` or ``rolled_pairs``
        (the caller reads steps itself), and for pairs and ``seen_*`` columns
        ``pair_span``.

        ``fresh_source`` is ``source`` without the files of the days read from
        derived files: the events the query aggregates itself. For ``seen_*``
        columns, ``fresh_rollups`` holds the visits of the other whole days
        that have a rollup, and ``fresh_source`` leaves those days out too.
        On a partial day, the rollup read leaves out the visitors in ``touched``
        (those of its newer files and of unflushed events), whose events of
        the day (its compacted file's too) ``fresh_source`` has instead.
        """
        cursor.register("pending_events", pending)
        if derived in (None, "visits"):  # the others read fresh_source only
            _events_view(cursor, "source", snapshot.files, snapshot.foreign)
        if not derived:
            return
        rolled = snapshot.rolled
        aside = {}
        if derived == "seen":
            aside = {d: path for d, path in snapshot.rollups.items() if d not in rolled}
        derived_days = rolled.keys() | aside.keys()
        partial = snapshot.partial & derived_days  # never current pairs, so never seen's rolled
        compacted = [snapshot.compacted[day] for day in sorted(partial)]
        skipped = derived_days - partial
        fresh = [
            f for f in snapshot.files if snapshot.file_days[f] not in skipped and f not in compacted
        ]
        if partial:  # the visitors whose visits of a partial day are built from events
            newer = [f for f in fresh if snapshot.file_days[f] in partial]
            newer_events = (
                f"{_read_events(newer, snapshot.foreign)} UNION ALL BY NAME " if newer else ""
            )
            cursor.execute(
                "CREATE OR REPLACE TEMP VIEW touched AS SELECT DISTINCT visitor_id, "
                f"{_day('timestamp')} AS day FROM ({newer_events}SELECT * FROM pending_events)"
            )
        _events_view(cursor, "fresh_source", fresh, snapshot.foreign, compacted)
        if derived == "seen":
            _parquet_view(
                cursor, "fresh_rollups", aside, UNSEEN_VISIT_COLUMNS, EMPTY_VISITS, partial
            )
        if derived == "steps":
            return
        if derived == "pairs":
            _parquet_view(cursor, "rolled_pairs", rolled, PAIR_SCHEMA.names, EMPTY_PAIRS)
        else:  # rollups written before the seen_* columns existed lack them
            columns = UNSEEN_VISIT_COLUMNS if derived == "visits" else VISIT_SCHEMA.names
            _parquet_view(cursor, "rolled_visits", rolled, columns, EMPTY_VISITS, partial)
        if derived != "visits":
            since = _day_start(snapshot.pairs_since) if snapshot.pairs_since else "'-infinity'"
            cursor.execute(
                f"CREATE OR REPLACE TEMP VIEW pair_span AS SELECT {since}::TIMESTAMPTZ "
                "AS seen_since"
            )

    async def fetch(
        self,
        sql: str,
        parameters: dict[str, Any] | list[Any] | None = None,
        *,
        derived: Derived = None,
        site_id: str | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``sql`` (with ``source`` bound to a site and range when given).

        ``derived`` also binds the range's derived data (see ``sql.Derived``).

        Cancelling the calling task, or exceeding the timeout, interrupts DuckDB.
        """

        def execute(
            cursor: duckdb.DuckDBPyConnection, _: Snapshot, abandoned: Callable[[], bool]
        ) -> tuple[list[str], list[tuple[Any, ...]]]:
            return self._execute(cursor, sql, parameters, abandoned)

        return await self._run(
            execute, (sql, repr(parameters)), derived, site_id=site_id, start=start, end=end
        )

    async def compute(
        self,
        work: Callable[[duckdb.DuckDBPyConnection, Snapshot], T],
        key: Hashable,
        *,
        site_id: str,
        start: dt.datetime,
        end: dt.datetime,
    ) -> T:
        """``work(cursor, snapshot)`` in a query thread, for the site and range: the
        funnel steps of the days where they are current in ``snapshot.rolled``, and
        ``fresh_source`` bound to the events of the others (derived "steps"). Its
        answer is cached under ``key`` while the data stays the same. Cancelling
        interrupts its DuckDB queries.
        """

        def execute(
            cursor: duckdb.DuckDBPyConnection, snapshot: Snapshot, abandoned: Callable[[], bool]
        ) -> T:
            return self._within_memory(lambda: work(cursor, snapshot), abandoned)

        return await self._run(execute, (key,), "steps", site_id=site_id, start=start, end=end)

    async def _run(
        self,
        execute: Callable[[duckdb.DuckDBPyConnection, Snapshot, Callable[[], bool]], T],
        what: tuple[Hashable, ...],
        derived: Derived,
        *,
        site_id: str | None,
        start: dt.datetime | None,
        end: dt.datetime | None,
    ) -> T:
        """``execute(cursor, snapshot, abandoned)`` in a query thread, its answer cached
        under ``what`` and the snapshot's fingerprint (see :meth:`fetch`)."""
        cursor = self._cursor()
        parts = self._pending() if site_id is not None else ()
        abandoned = threading.Event()

        def run() -> T:
            tried = (*what, derived, site_id, start, end)
            key = None
            snapshot = Snapshot()
            with contextlib.ExitStack() as stack:
                stack.callback(cursor.close)
                failed_at = self._too_large.get(tried)
                if failed_at is not None and time.monotonic() - failed_at < TOO_LARGE_AGAIN:
                    # running it again would hold every other query back, to fail again
                    raise self._too_large_error()
                if site_id is not None:
                    assert start is not None and end is not None
                    stack.enter_context(site_lock(self.layout, site_id))
                    snapshot, pending = self._view(site_id, start, end, parts, derived=derived)
                    key = (*what, derived, snapshot.fingerprint(), pending.num_rows)
                    if (answer := self.cache.get(key)) is not None:
                        return answer
                    self._prepare_source(cursor, snapshot, pending, derived=derived)
                try:
                    answer = execute(cursor, snapshot, abandoned.is_set)
                except QueryTooLarge:
                    self._too_large.put(tried, time.monotonic())
                    raise
            if key is not None:
                self.cache.put(key, answer)
            return answer

        try:
            with self._time_limit():
                return await self._threads.run(run)
        except (QueryTimeout, trio.Cancelled):
            abandoned.set()  # if it still waits for memory, it never starts
            with contextlib.suppress(duckdb.Error):  # it may have finished meanwhile
                cursor.interrupt()
            raise

    def _execute(
        self,
        cursor: duckdb.DuckDBPyConnection,
        sql: str,
        parameters: dict[str, Any] | list[Any] | None,
        abandoned: Callable[[], bool],
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows (:meth:`_within_memory`)."""

        def execute() -> tuple[list[str], list[tuple[Any, ...]]]:
            result = cursor.execute(sql, parameters or [])
            return [d[0] for d in result.description or []], result.fetchall()

        return self._within_memory(execute, abandoned)

    def _within_memory(self, run: Callable[[], T], abandoned: Callable[[], bool]) -> T:
        """``run`` a query (blocking) beside the others; out of memory there, again alone.

        A query whose caller gave up while it waited for its turn does not run:
        DuckDB forgets an interrupt that comes before the query starts.
        """
        try:
            with self._memory.together():
                _stop_if(abandoned)
                return run()
        except duckdb.OutOfMemoryException:
            pass
        try:
            with self._memory.alone():
                _stop_if(abandoned)
                return run()
        except duckdb.OutOfMemoryException:
            raise self._too_large_error() from None

    def _too_large_error(self) -> QueryTooLarge:
        return QueryTooLarge(
            f"the query needs more memory than query_memory_mb ({self._memory_mb} MiB) "
            "allows; ask for a shorter range, or raise query_memory_mb"
        )

    @contextlib.contextmanager
    def _time_limit(self) -> Iterator[None]:
        """Raise ``QueryTimeout`` once the engine's timeout has passed.

        It bounds the wait for a query thread too: a query must see the
        unflushed events it took when sent still unflushed or in their own
        files, which compaction leaves alone for ``SETTLE_SECONDS``.
        """
        try:
            with trio.fail_after(self._timeout):
                yield
        except trio.TooSlowError:
            raise QueryTimeout(f"the query took longer than {self._timeout:g} s") from None

    async def stream(
        self,
        sql: str,
        parameters: dict[str, Any],
        *,
        site_id: str,
        start: dt.datetime,
        end: dt.datetime,
        batch_rows: int = 10_000,
    ) -> AsyncIterator[pa.RecordBatch]:
        """Yield the result of ``sql`` in Arrow batches: constant memory for any size.

        Before the first batch, every row, sorted (``sql`` ends in an ORDER BY),
        goes to an Arrow file in ``tmp/export-<pid>/``: that is when
        it needs memory (shared like any query's, :meth:`_within_memory`) and
        reads the event files (under the site lock). The batches then come from
        that file, outside DuckDB: a client that reads slowly, or stops, holds
        neither DuckDB's memory nor compaction, retention or erasure up.
        Starting (the first batch) may raise ``QueryTimeout`` or
        ``QueryTooLarge``; closing the iterator early interrupts the query.
        """
        cursor = self._cursor()
        parts = self._pending()
        handoff = Handoff()  # a call may still run when this generator is closed
        handoff.resources.callback(cursor.close)
        sorted_rows = self.layout.export_folder(os.getpid()) / f"{uuid.uuid4().hex}.arrow"
        handoff.resources.callback(sorted_rows.unlink, missing_ok=True)

        def write_sorted() -> None:
            with site_lock(self.layout, site_id):  # no compaction swap while files are read
                self._prepare_source(cursor, *self._view(site_id, start, end, parts))
                reader = cursor.sql(sql, params=parameters).to_arrow_reader(batch_rows)
                options = pa.ipc.IpcWriteOptions(compression="lz4")
                with pa.ipc.new_file(sorted_rows, reader.schema, options=options) as writer:
                    for batch in _duckdb_batches(reader):
                        writer.write_batch(batch)

        def open_sorted() -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
            sorted_rows.parent.mkdir(parents=True, exist_ok=True)
            self._within_memory(write_sorted, lambda: handoff.given_up)
            file = handoff.resources.enter_context(pa.memory_map(str(sorted_rows)))
            rows = pa.ipc.open_file(file)
            return rows.schema, (rows.get_batch(i) for i in range(rows.num_record_batches))

        try:
            with self._time_limit():
                schema, batches = await self._threads.run(handoff.call(open_sorted))
            read = handoff.call(partial(next, batches, None))
            batch = await self._threads.run(read)
            if batch is None:  # still one (empty) batch, so encoders know the columns
                yield pa.RecordBatch.from_pylist([], schema=schema)
            while batch is not None:
                yield batch
                batch = await self._threads.run(read)
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.interrupt()
            handoff.give_up()

    async def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        """True when DuckDB answers a trivial query within ``timeout`` seconds: beside
        the queries, not behind them in the query threads or for the memory."""

        def answer() -> bool:
            with self._cursor() as cursor:
                return cursor.execute("SELECT 42").fetchall() == [(42,)]

        with trio.move_on_after(timeout):
            try:
                return await trio.to_thread.run_sync(answer, abandon_on_cancel=True)
            except duckdb.Error:
                return False
        return False

    def close(self) -> None:
        """Close DuckDB once the queries still running (interrupted when their callers
        were cancelled) have stopped; one that runs on past ``CLOSE_WAIT`` seconds keeps
        it open until the process ends."""
        if self._threads.close(timeout=CLOSE_WAIT):
            self._database.close()
        else:
            log.warning("a query still ran %g s after shutdown began; DuckDB left open", CLOSE_WAIT)
