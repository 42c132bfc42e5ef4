"""Writing events as ZSTD Parquet files that appear atomically and exactly once."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mallard.storage.layout import DataLayout
from mallard.storage.locks import site_lock
from mallard.storage.schema import MICROS_PER_DAY


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def write_aside(table: pa.Table, staging: Path, **options: Any) -> None:
    """Write ``table`` as ZSTD Parquet at ``staging`` and make it durable (not yet visible)."""
    pq.write_table(table, staging, compression="zstd", **options)
    fsync_file(staging)


def write_grouped(
    table: pa.Table,
    staging: Path,
    keys: list[str],
    *,
    own_group: int,
    max_rows: int,
    **options: Any,
) -> None:
    """``write_aside`` for a ``table`` sorted by ``keys``: every run of at least
    ``own_group`` rows with the same keys gets row groups of its own (whose
    statistics then name one value), the shorter runs share row groups of up to
    ``max_rows`` rows. ``options`` go to ``pyarrow.parquet.ParquetWriter``."""
    changes = pa.array(np.zeros(0, dtype=bool))
    if table.num_rows > 1:
        parts = []
        for key in keys:
            after, before = table[key][1:], table[key][:-1]
            differs = pc.xor(pc.is_null(after), pc.is_null(before))  # where either is null
            parts.append(pc.fill_null(pc.not_equal(after, before), differs))
        changes = functools.reduce(pc.or_, parts)
    starts = [0, *(np.flatnonzero(changes.to_numpy(zero_copy_only=False)) + 1)]
    bounds = [*zip(starts, [*starts[1:], table.num_rows], strict=True)]
    with pq.ParquetWriter(staging, table.schema, compression="zstd", **options) as writer:
        shared = 0  # where the rows not written yet start
        for start, end in bounds:
            own = end - start >= own_group
            if own or end - shared > max_rows:
                if start > shared:
                    writer.write_table(table.slice(shared, start - shared), max_rows)
                shared = start
            if own:
                writer.write_table(table.slice(start, end - start), max_rows)
                shared = end
        if shared < table.num_rows:
            writer.write_table(table.slice(shared), max_rows)
    fsync_file(staging)


def write_parquet_atomically(table: pa.Table, destination: Path, staging: Path) -> None:
    """Write ``table`` at ``staging``, make it durable, then rename it to ``destination``."""
    write_aside(table, staging)
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, destination)
    fsync_dir(destination.parent)


def split_by_partition(table: pa.Table) -> list[tuple[str, int, pa.Table]]:
    """``(site, UTC day, rows)`` for every partition the table's events fall into."""
    days = pc.divide(table["timestamp"].cast(pa.int64()), MICROS_PER_DAY)
    keyed = table.append_column("_day", days)
    pairs = keyed.group_by(["site_id", "_day"]).aggregate([]).to_pylist()
    if len(pairs) == 1:  # the usual case: one site, one day; no copy needed
        return [(pairs[0]["site_id"], pairs[0]["_day"], table)]
    parts = []
    for pair in sorted(pairs, key=lambda p: (p["site_id"], p["_day"])):
        mask = pc.and_(
            pc.equal(keyed["site_id"], pair["site_id"]), pc.equal(keyed["_day"], pair["_day"])
        )
        parts.append((pair["site_id"], pair["_day"], table.filter(mask)))
    return parts


def write_batch(
    table: pa.Table,
    layout: DataLayout,
    name: str,
    done: set[Path] | None = None,
    *,
    keep: Callable[[pa.Table], pa.Table] | None = None,
) -> list[Path]:
    """Write one batch as ``<partition>/<name>.parquet`` per (site, UTC day).

    Idempotent: a partition that already has the file is skipped, which is what
    makes replaying a write-ahead log segment exactly-once; so is one whose file
    is in ``done``, the files an earlier attempt at the batch wrote (which
    compaction may have merged away since), and to which this adds each file
    it writes. ``keep`` (the erasures' filter) runs on each file's rows under the
    site's lock, which an erasure's swap holds alone: what it erased while the
    batch was on its way is left out here, or the erasure finds the file. Blocking:
    run it in a worker thread. Returns the files written now.
    """
    done = set() if done is None else done
    written = []
    for index, (site_id, day, rows) in enumerate(split_by_partition(table)):
        destination = layout.partition(site_id, day) / f"{name}.parquet"
        if destination in done or destination.exists():
            continue
        destination.parent.parent.mkdir(parents=True, exist_ok=True)  # the site's: its lock
        with site_lock(layout, site_id):
            kept = rows if keep is None else keep(rows)
            if kept.num_rows:
                staging = layout.tmp / f"{name}-{index}.parquet.tmp"
                write_parquet_atomically(kept, destination, staging)
                written.append(destination)
        done.add(destination)
    return written
