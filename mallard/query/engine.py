"""DuckDB over the event files, run in worker threads so the event loop stays free.

Each query gets its own cursor on one shared in-memory database, and a
``source`` relation made of exactly the Parquet files of its site and dates
(partition pruning by path, before DuckDB opens anything) plus the events the
server accepted but has not flushed yet, so a query sent after a 202 sees that
event. No DuckDB extension is ever downloaded: only what ships in the wheel.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import trio

from mallard.storage.compaction import site_lock
from mallard.storage.layout import DataLayout
from mallard.storage.schema import events_to_table

PendingEvents = Callable[[], Sequence[pa.Table]]
EMPTY_EVENTS = events_to_table([])


class QueryTimeout(Exception):
    """A query ran longer than the engine allows and was interrupted."""


class QueryEngine:
    """Runs SQL over a site's events; at most ``max_concurrent`` queries at once."""

    def __init__(
        self,
        layout: DataLayout,
        *,
        pending: PendingEvents = tuple,
        max_concurrent: int = 4,
        timeout: float = 30.0,
        memory_limit: str = "1GB",
    ) -> None:
        self.layout = layout
        self._pending = pending
        self._timeout = timeout
        self._database = duckdb.connect(
            ":memory:",
            config={
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "memory_limit": memory_limit,
                "threads": max(os.cpu_count() or 1, 1),
            },
        )
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(max_concurrent)

    # --- which data a query reads ---

    def files(self, site_id: str, start: dt.datetime, end: dt.datetime) -> list[str]:
        """The site's Parquet files whose UTC date partition overlaps ``[start, end)``."""
        site_dir = self.layout.events / f"site_id={site_id}"
        first, last = start.date().isoformat(), (end - dt.timedelta(microseconds=1)).date()
        found = []
        try:
            partitions = os.scandir(site_dir)
        except FileNotFoundError:
            return []
        with partitions:
            for partition in partitions:
                day = partition.name.removeprefix("date=")
                if partition.is_dir() and first <= day <= last.isoformat():
                    names = os.listdir(partition.path)
                    found += [
                        os.path.join(partition.path, n) for n in names if n.endswith(".parquet")
                    ]
        return sorted(found)

    def first_day(self, site_id: str) -> dt.date | None:
        """The UTC date of the site's oldest partition (None without data)."""
        site_dir = self.layout.events / f"site_id={site_id}"
        days = []
        with contextlib.suppress(FileNotFoundError), os.scandir(site_dir) as partitions:
            for partition in partitions:
                with contextlib.suppress(ValueError):
                    days.append(dt.date.fromisoformat(partition.name.removeprefix("date=")))
        return min(days, default=None)

    def pending_table(self, site_id: str, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """The accepted, not yet flushed events of the site in ``[start, end)``."""
        parts = self._pending()
        if not parts:
            return EMPTY_EVENTS
        table = pa.concat_tables(parts)
        micros = table["timestamp"].cast(pa.int64())
        mask = pc.and_(
            pc.equal(table["site_id"], site_id),
            pc.and_(
                pc.greater_equal(micros, int(start.timestamp() * 1_000_000)),
                pc.less(micros, int(end.timestamp() * 1_000_000)),
            ),
        )
        return table.filter(mask)

    # --- running ---

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._database.cursor()

    @staticmethod
    def _prepare_source(
        cursor: duckdb.DuckDBPyConnection, files: list[str], pending: pa.Table
    ) -> None:
        cursor.register("pending_events", pending)
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            cursor.execute(
                "CREATE OR REPLACE TEMP VIEW source AS "
                f"SELECT * EXCLUDE (date) FROM read_parquet([{listing}], "
                "hive_partitioning = true, union_by_name = true) "
                "UNION ALL BY NAME SELECT * FROM pending_events"
            )
        else:
            cursor.execute("CREATE OR REPLACE TEMP VIEW source AS SELECT * FROM pending_events")

    async def fetch(
        self,
        sql: str,
        parameters: dict[str, Any] | list[Any] | None = None,
        *,
        site_id: str | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``sql`` (with ``source`` bound to a site and range when given).

        Cancelling the calling task, or exceeding the timeout, interrupts DuckDB.
        """
        cursor = self._cursor()
        pending = None
        if site_id is not None:
            assert start is not None and end is not None
            pending = self.pending_table(site_id, start, end)
        interrupted = False

        def run() -> tuple[list[str], list[tuple[Any, ...]]]:
            with contextlib.ExitStack() as stack:
                stack.callback(cursor.close)
                if site_id is not None:
                    assert start is not None and end is not None and pending is not None
                    stack.enter_context(site_lock(self.layout, site_id))
                    self._prepare_source(cursor, self.files(site_id, start, end), pending)
                result = cursor.execute(sql, parameters or [])
                columns = [d[0] for d in result.description or []]
                return columns, result.fetchall()

        try:
            with trio.fail_after(self._timeout):
                return await trio.to_thread.run_sync(
                    run, limiter=self._limiter, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            interrupted = True
            raise QueryTimeout(f"the query took longer than {self._timeout:g} s") from None
        except trio.Cancelled:
            interrupted = True
            raise
        finally:
            if interrupted:
                with contextlib.suppress(duckdb.Error):  # it may have finished meanwhile
                    cursor.interrupt()

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

        Each batch is fetched in a worker thread; closing the iterator early (a
        client that went away) interrupts the query.
        """
        cursor = self._cursor()
        pending = self.pending_table(site_id, start, end)
        lock = contextlib.ExitStack()  # held while the files are read: no compaction swap

        def open_reader() -> pa.RecordBatchReader:
            lock.enter_context(site_lock(self.layout, site_id))
            self._prepare_source(cursor, self.files(site_id, start, end), pending)
            return cursor.sql(sql, params=parameters).to_arrow_reader(batch_rows)

        def next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
            try:
                return reader.read_next_batch()
            except StopIteration:
                return None

        try:
            async with self._limiter:
                reader = await trio.to_thread.run_sync(open_reader)
                empty = True
                while (batch := await trio.to_thread.run_sync(next_batch, reader)) is not None:
                    empty = False
                    yield batch
                if empty:  # still one (empty) batch, so encoders know the columns
                    yield pa.RecordBatch.from_pylist([], schema=reader.schema)
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.interrupt()
            cursor.close()
            lock.close()

    async def ping(self) -> bool:
        """True when DuckDB answers a trivial query."""
        try:
            _, rows = await self.fetch("SELECT 42")
        except duckdb.Error:
            return False
        return rows == [(42,)]

    def close(self) -> None:
        self._database.close()
