"""From the event channel to the write-ahead log and ZSTD Parquet.

Two tasks cooperate. The *collector* drains the event channel in groups; with
``durability = "wal"`` it appends each group to the write-ahead log with one
fsync (group commit) and only then lets the handlers of that group answer 202.
It adds the events to the current batch and cuts the batch at ``flush_count``
events or every ``flush_interval`` seconds. The *flusher* writes each cut
batch to Parquet in a worker thread, then retires its WAL segment.

While fsyncs are fast the collector appends on the event loop itself: a round
trip through a worker thread costs two wake-ups, which a machine busy with
queries delays by milliseconds each. After a slow fsync the next append goes
to a thread, so a slow disk never holds up the loop twice in a row.

Back-pressure: if the flusher falls behind (slow or failing disk) and a second
batch is full, the collector stops taking on events. With the WAL it refuses
the groups it drains (their handlers answer 503); in memory mode it stops
draining, the channel fills, and handlers answer 503 when they cannot enqueue.
Either way memory stays bounded and no event is answered 202 and then dropped.

The writer also owns the drop counts (:mod:`mallard.ingest.dropped`), written
on the flush schedule, and reports what it does to :class:`~mallard.metrics.Metrics`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import trio

from mallard.ingest.dropped import DropLog
from mallard.metrics import Metrics
from mallard.storage.erasure import Tombstones
from mallard.storage.layout import DataLayout, batch_name, new_writer_id
from mallard.storage.parquet import write_batch
from mallard.storage.schema import Event, events_to_table
from mallard.storage.wal import WriteAheadLog, logged_by_others

log = logging.getLogger("mallard.writer")

MAX_RETRY_DELAY = 5.0
HANDOFF_RETRY = 0.05  # seconds between tries to hand a batch to a busy flusher
REFUSALS_REMEMBERED = 1024  # long enough for every waiting handler to look
STAGED_ROWS = 1024  # events kept as tuples before they become one Arrow table
INLINE_FSYNC_SECONDS = 0.002  # after an fsync this fast, the next append is on the event loop


def _everything(table: pa.Table) -> pa.Table:
    return table


def _site_table(
    events: list[Event], keep: Callable[[pa.Table], pa.Table], site_id: str
) -> pa.Table:
    """The events of one site as a table, erased ones left out."""
    return keep(events_to_table([e for e in events if e.site_id == site_id]))


class EventWriter:
    """Collects events from a channel, makes them durable, flushes them to Parquet."""

    def __init__(
        self,
        layout: DataLayout,
        *,
        flush_count: int,
        flush_interval: float,
        durability: Literal["wal", "memory"] = "wal",
        metrics: Metrics | None = None,
        tombstones: Tombstones | None = None,
    ) -> None:
        self.layout = layout
        self.tombstones = tombstones or Tombstones(layout)
        self.flush_count = flush_count
        self.flush_interval = flush_interval
        self.writer_id = new_writer_id()
        self.metrics = metrics or Metrics()
        self.drops = DropLog(layout, self.writer_id)  # written on the same schedule as events
        self._wal = WriteAheadLog(layout, self.writer_id) if durability == "wal" else None
        self.flush_failing = False
        self.wal_failing = False
        # Accepted events are held as Arrow tables (a few hundred bytes less per
        # event than Python tuples), converted STAGED_ROWS at a time.
        self._staged: list[Event] = []
        self._batch: list[pa.Table] = []  # being collected: batch number self._batch_number
        self._batch_rows = 0
        self._batch_number = 0
        # (batch number, tables) handed to the flusher, oldest first
        self._cut: deque[tuple[int, list[pa.Table]]] = deque()
        self._cut_rows = 0
        # Group commit: events are numbered in channel order, from 1.
        self._received = 0  # taken from the channel
        self._resolved = 0  # durable or refused
        self._refused: deque[tuple[int, int]] = deque(maxlen=REFUSALS_REMEMBERED)
        self._commit = trio.Event()
        self._last_fsync_seconds = math.inf  # the first append, to a disk not yet seen, in a thread

    @property
    def durable(self) -> bool:
        """True when a 202 waits for the write-ahead log."""
        return self._wal is not None

    @property
    def failing(self) -> bool:
        return self.flush_failing or self.wal_failing

    @property
    def pending(self) -> int:
        """Events taken from the channel and not yet in Parquet."""
        return len(self._staged) + self._batch_rows + self._cut_rows

    def unflushed(
        self, *, with_erased: bool = False
    ) -> list[tuple[str, Callable[[str], pa.Table]]]:
        """The accepted events not yet in Parquet (read-your-writes), erased ones left out
        unless ``with_erased`` (for an erasure to count them).

        Each part comes with the name its batch's files will have, so a reader
        that also lists files can tell which have been written since, and as a
        function of a site id that makes a table holding at least that site's
        events: called in the reader's thread, so the event loop never
        converts or filters for a query. Events not yet in a table are
        converted for the one site only.
        """
        keep = _everything if with_erased else self.tombstones.keep

        def whole(table: pa.Table, _site_id: str) -> pa.Table:
            return keep(table)

        parts = [
            (batch_name(self.writer_id, number), functools.partial(whole, table))
            for number, batch in self._cut
            for table in batch
        ]
        collecting = batch_name(self.writer_id, self._batch_number)
        parts += [(collecting, functools.partial(whole, table)) for table in self._batch]
        if self._staged:
            parts.append((collecting, functools.partial(_site_table, list(self._staged), keep)))
        return parts

    def logged_elsewhere(
        self, *, with_erased: bool = False
    ) -> list[tuple[str, Callable[[str], pa.Table]]]:
        """What :meth:`unflushed` is for the other processes writing to the data dir
        (``--workers``), read from their write-ahead logs: blocking, for the thread
        of a query, before it lists the files."""
        if self._wal is None:  # memory mode: nobody logs
            return []
        keep = _everything if with_erased else self.tombstones.keep
        return [
            (name, functools.partial(_site_table, events, keep))
            for name, events in logged_by_others(self.layout, self.writer_id)
        ]

    def sites_logged_elsewhere(self) -> set[str]:
        """The sites of :meth:`logged_elsewhere`'s events (blocking)."""
        if self._wal is None:
            return set()
        return {
            e.site_id for _, events in logged_by_others(self.layout, self.writer_id) for e in events
        }

    async def recheck(self) -> None:
        """After the write-ahead log failed, see whether its folder takes a write again
        (a probe page, in a thread), so that readiness does not wait for an event."""
        if self._wal is None or not self.wal_failing:
            return
        try:
            await trio.to_thread.run_sync(self._wal.probe)
        except OSError:
            return
        log.warning("write-ahead log works again")
        self.wal_failing = False

    def unflushed_sites(self) -> set[str]:
        """The sites of the accepted events not yet in Parquet: they have data already."""
        sites = {event.site_id for event in self._staged}
        for table in itertools.chain(self._batch, *(batch for _, batch in self._cut)):
            sites.update(pc.unique(table["site_id"]).to_pylist())
        return sites

    async def wait_durable(self, sequence: int) -> bool:
        """Wait until event number ``sequence`` is in the WAL (True) or refused (False)."""
        return not await self.refused_among(sequence, sequence)

    async def refused_among(self, first: int, last: int) -> list[tuple[int, int]]:
        """Wait until events ``first``..``last`` are durable or refused; the refused ranges.

        One wait and one look at the refusals for a whole batch of events.
        """
        while self._resolved < last:
            await self._commit.wait()
        return [(a, b) for a, b in self._refused if a <= last and b >= first]

    async def run(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        """Run until ``events`` is closed and everything received is flushed.

        Drop counts are written every ``flush_interval`` seconds and at the end.
        """
        batches_send, batches_receive = trio.open_memory_channel[tuple[int, pa.Table]](0)
        try:
            async with trio.open_nursery() as timer:
                timer.start_soon(self.drops.persist_every, self.flush_interval)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._flush_batches, batches_receive)
                    async with batches_send:
                        await self._collect(events, batches_send)
                timer.cancel_scope.cancel()
            await self.drops.persist()
        finally:
            if self._wal is not None:
                self._wal.close()

    # --- collector ---

    async def _collect(
        self,
        events: trio.MemoryReceiveChannel[Event],
        batches: trio.MemorySendChannel[tuple[int, pa.Table]],
    ) -> None:
        deadline = trio.current_time() + self.flush_interval
        closed = False
        while not closed:
            group: list[Event] = []
            with trio.move_on_at(deadline):
                try:
                    group.append(await events.receive())
                except trio.EndOfChannel:
                    closed = True
                while True:  # take what is already waiting: that is the group
                    try:
                        group.append(events.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
            if group:
                await self._take(group)
            due = self.collected >= self.flush_count or trio.current_time() >= deadline
            if closed or due:
                # Memory mode waits for the flusher: that is its back-pressure.
                handed_off = await self._cut_batch(batches, wait=closed or not self.durable)
                delay = self.flush_interval if handed_off else HANDOFF_RETRY
                deadline = trio.current_time() + delay

    async def _take(self, group: list[Event]) -> None:
        first = self._received + 1
        self._received += len(group)
        if self._wal is None:  # already answered 202 when enqueued
            await self._add(group)
            return
        if self.collected >= 2 * self.flush_count:  # the flusher is behind: refuse
            self._resolve(refused=(first, self._received))
            return
        try:
            fsync_seconds = await self._append(self._wal, group)
        except OSError as error:
            if not self.wal_failing:
                log.error(
                    "write-ahead log append failed, answering 503: %s",
                    error,
                    extra={"events": len(group), "error": str(error)},
                )
                self.wal_failing = True
            self._resolve(refused=(first, self._received))
            return
        self.metrics.wal_fsync_seconds.observe(fsync_seconds)
        if self.wal_failing:
            log.warning("write-ahead log works again")
            self.wal_failing = False
        self._resolve()
        await self._add(group)

    async def _append(self, wal: WriteAheadLog, group: list[Event]) -> float:
        """Append ``group`` to the log: on the event loop if the last fsync was fast."""
        inline = self._last_fsync_seconds < INLINE_FSYNC_SECONDS
        self._last_fsync_seconds = math.inf  # if this one fails, the next goes to a thread
        if inline:
            fsync_seconds = wal.append(self._batch_number, group)
        else:
            fsync_seconds = await trio.to_thread.run_sync(wal.append, self._batch_number, group)
        self._last_fsync_seconds = fsync_seconds
        return fsync_seconds

    @property
    def collected(self) -> int:
        """Events in the batch being collected."""
        return len(self._staged) + self._batch_rows

    async def _add(self, group: list[Event], *, convert_all: bool = False) -> None:
        self._staged.extend(group)
        self.metrics.buffered.set(self.pending)
        if self._staged and (convert_all or len(self._staged) >= STAGED_ROWS):
            # Stay visible to queries and counts while converting.
            table = await trio.to_thread.run_sync(events_to_table, self._staged)
            self._staged = []
            self._batch.append(table)
            self._batch_rows += table.num_rows

    def _resolve(self, refused: tuple[int, int] | None = None) -> None:
        if refused is not None:
            self._refused.append(refused)
        self._resolved = self._received
        commit, self._commit = self._commit, trio.Event()
        commit.set()

    async def _cut_batch(
        self, batches: trio.MemorySendChannel[tuple[int, pa.Table]], *, wait: bool
    ) -> bool:
        """Hand the current batch to the flusher; False if it is busy and ``wait`` is off."""
        await self._add([], convert_all=True)
        if not self._batch:
            return True
        number, parts, rows = self._batch_number, self._batch, self._batch_rows
        self._cut.append((number, parts))
        self._cut_rows += rows
        self._batch, self._batch_rows = [], 0
        self._batch_number += 1  # what the next events are collected into
        try:
            if wait:
                await batches.send((number, pa.concat_tables(parts)))
            else:
                batches.send_nowait((number, pa.concat_tables(parts)))
        except trio.WouldBlock:
            self._cut.pop()
            self._cut_rows -= rows
            self._batch, self._batch_rows = parts, rows
            self._batch_number = number
            return False
        return True

    # --- flusher ---

    async def _flush_batches(
        self, batches: trio.MemoryReceiveChannel[tuple[int, pa.Table]]
    ) -> None:
        async for number, batch in batches:
            await self._flush_with_retry(number, batch)
            if self._wal is not None:
                try:
                    await trio.to_thread.run_sync(self._wal.retire, number)
                except OSError as error:  # harmless: replay skips what is in Parquet
                    log.warning("could not delete WAL segment %d: %s", number, error)
            self._cut.popleft()
            self._cut_rows -= batch.num_rows
            self.metrics.buffered.set(self.pending)

    async def _flush_with_retry(self, number: int, batch: pa.Table) -> None:
        name = batch_name(self.writer_id, number)
        done: set[Path] = set()  # never written twice, even once compacted away
        delay = 0.25
        while True:
            started = time.perf_counter()
            try:
                files, size = await trio.to_thread.run_sync(self._write, batch, name, done)
            except Exception as error:  # keep the batch and retry: nothing accepted is dropped
                if not self.flush_failing:
                    log.error(
                        "flush of %d events failed, retrying: %s",
                        batch.num_rows,
                        error,
                        extra={"events": batch.num_rows, "error": str(error)},
                    )
                    self.flush_failing = True
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            if self.flush_failing:
                log.warning("flushing works again")
                self.flush_failing = False
            elapsed = time.perf_counter() - started
            self._count_flush(batch.num_rows, files, size, elapsed)
            log.info(
                "flushed %d events into %d files (%d bytes) in %.1f ms",
                batch.num_rows,
                files,
                size,
                elapsed * 1000,
                extra={
                    "events": batch.num_rows,
                    "files": files,
                    "bytes": size,
                    "duration_ms": elapsed * 1000,
                },
            )
            return

    def _write(self, batch: pa.Table, name: str, done: set[Path]) -> tuple[int, int]:
        """Write a batch to Parquet (blocking); returns the files and bytes written.

        Events erased meanwhile (see :mod:`mallard.storage.erasure`) are left out.
        """
        files = write_batch(batch, self.layout, name, done, keep=self.tombstones.keep)
        return len(files), sum(file.stat().st_size for file in files)

    def _count_flush(self, events: int, files: int, size: int, seconds: float) -> None:
        self.metrics.flush_seconds.observe(seconds)
        self.metrics.flushed_events.inc(events)
        self.metrics.parquet_files.inc(files)
        self.metrics.parquet_bytes.inc(size)
