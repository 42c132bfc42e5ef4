"""Writing events as ZSTD Parquet files that appear atomically and exactly once."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from mallard.storage.layout import DataLayout
from mallard.storage.schema import Event, events_to_table


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet_atomically(events: Sequence[Event], destination: Path, staging: Path) -> None:
    """Write ``events`` at ``staging``, make it durable, then rename it to ``destination``."""
    pq.write_table(events_to_table(events), staging, compression="zstd")
    with open(staging, "rb") as file:
        os.fsync(file.fileno())
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, destination)
    fsync_dir(destination.parent)


def write_batch(events: Sequence[Event], layout: DataLayout, name: str) -> list[Path]:
    """Write one batch as ``<partition>/<name>.parquet`` per (site, UTC day).

    Idempotent: a partition that already has the file is skipped, which is what
    makes replaying a write-ahead log segment exactly-once. Blocking: run it in
    a worker thread. Returns the files written now.
    """
    groups: dict[tuple[str, int], list[Event]] = defaultdict(list)
    for event in events:
        groups[event.site_id, event.day].append(event)
    written = []
    for index, ((site_id, day), group) in enumerate(sorted(groups.items())):
        destination = layout.partition(site_id, day) / f"{name}.parquet"
        if destination.exists():
            continue
        write_parquet_atomically(group, destination, layout.tmp / f"{name}-{index}.parquet.tmp")
        written.append(destination)
    return written
