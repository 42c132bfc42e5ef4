"""Buffered events to ZSTD Parquet, one file per site and UTC day per flush.

Two tasks cooperate: the *collector* drains the event channel in batches and
cuts a batch at ``flush_count`` events or every ``flush_interval`` seconds; the
*flusher* writes each batch in a worker thread so the event loop never blocks
on disk or encoding. While a batch is being written the collector keeps
filling the next one; if that one is full too, the collector stops draining
and the event channel fills up, which the ingestion handler turns into 503
responses. Memory therefore stays bounded by the channel size plus two batches.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq
import trio

from mallard.storage.layout import DataLayout, unique_file_name
from mallard.storage.schema import Event, events_to_table

log = logging.getLogger("mallard.writer")

MAX_RETRY_DELAY = 30.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet_atomically(events: Sequence[Event], destination: Path, tmp_dir: Path) -> None:
    """Write ``events`` as one ZSTD Parquet file that appears at ``destination`` whole."""
    staging = tmp_dir / destination.name
    pq.write_table(events_to_table(events), staging, compression="zstd")
    with open(staging, "rb") as file:
        os.fsync(file.fileno())
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, destination)
    _fsync_dir(destination.parent)


def write_partitions(events: Sequence[Event], layout: DataLayout) -> list[Path]:
    """Write a batch as one file per (site, UTC day); returns the files written."""
    groups: dict[tuple[str, int], list[Event]] = defaultdict(list)
    for event in events:
        groups[event.site_id, event.day].append(event)
    written = []
    for (site_id, day), group in sorted(groups.items()):
        destination = layout.partition(site_id, day) / unique_file_name()
        write_parquet_atomically(group, destination, layout.tmp)
        written.append(destination)
    return written


class EventWriter:
    """Collects events from a channel and flushes them to Parquet."""

    def __init__(self, layout: DataLayout, *, flush_count: int, flush_interval: float) -> None:
        self.layout = layout
        self.flush_count = flush_count
        self.flush_interval = flush_interval
        self.failing = False  # a flush is failing and being retried
        self._batch: list[Event] = []  # being collected
        self._cut: list[list[Event]] = []  # cut batches, oldest first, until written

    @property
    def pending(self) -> int:
        """Events taken from the channel and not yet in Parquet."""
        return len(self._batch) + sum(len(batch) for batch in self._cut)

    async def run(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        """Run until ``events`` is closed and everything received is flushed."""
        batches_send, batches_receive = trio.open_memory_channel[list[Event]](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_batches, batches_receive)
            async with batches_send:
                await self._collect(events, batches_send)

    async def _collect(
        self,
        events: trio.MemoryReceiveChannel[Event],
        batches: trio.MemorySendChannel[list[Event]],
    ) -> None:
        deadline = trio.current_time() + self.flush_interval
        closed = False
        while not closed:
            with trio.move_on_at(deadline):
                try:
                    self._batch.append(await events.receive())
                except trio.EndOfChannel:
                    closed = True
                while len(self._batch) < self.flush_count:  # take what is already waiting
                    try:
                        self._batch.append(events.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
            if closed or len(self._batch) >= self.flush_count or trio.current_time() >= deadline:
                batch, self._batch = self._batch, []
                if batch:
                    self._cut.append(batch)
                    await batches.send(batch)
                deadline = trio.current_time() + self.flush_interval

    async def _flush_batches(self, batches: trio.MemoryReceiveChannel[list[Event]]) -> None:
        async for batch in batches:
            await self._flush_with_retry(batch)
            self._cut.pop(0)

    async def _flush_with_retry(self, batch: list[Event]) -> None:
        delay = 0.5
        while True:
            started = time.perf_counter()
            try:
                files = await trio.to_thread.run_sync(write_partitions, batch, self.layout)
            except Exception as error:  # keep the batch and retry: nothing accepted is dropped
                if not self.failing:
                    log.error("flush of %d events failed, retrying: %s", len(batch), error)
                    self.failing = True
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            if self.failing:
                log.warning("flushing works again")
                self.failing = False
            log.info(
                "flushed %d events into %d files in %.1f ms",
                len(batch),
                len(files),
                (time.perf_counter() - started) * 1000,
                extra={"events": len(batch), "files": len(files)},
            )
            return
