"""What a compacted file holds: the files it merged, named in its Parquet metadata.

Compaction renames the merged file in, then deletes the files it replaced. A
crash in between leaves both: the merged file's metadata (``MERGED_KEY``: each
file's name, size and modification time) tells which of the day's files it
already holds, so queries leave them out, and compaction and erasure delete them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pyarrow as pa

from mallard.storage.layout import COMPACTED_PREFIX

MERGED_KEY = b"mallard:merged"


def _identity(file: Path) -> list[Any]:
    """What tells a file from another of the same name: name, size, modification time."""
    info = file.stat()
    return [file.name, info.st_size, info.st_mtime_ns]


def merged_metadata(files: list[Path]) -> dict[bytes, str]:
    """The metadata of a compacted file that holds ``files``."""
    return {MERGED_KEY: json.dumps([_identity(file) for file in files])}


def merged_files(schema: pa.Schema) -> list[list[Any]]:
    """The identities of the files a compacted file holds, from its schema's metadata."""
    return json.loads((schema.metadata or {}).get(MERGED_KEY, b"[]"))


def held_by_compacted(
    partition: Path, names: Collection[str], merged: Callable[[Path], list[list[Any]]]
) -> set[str]:
    """The ``names`` (the partition's files) that a compacted file among them already
    holds; read or merged again, their events would count twice. ``merged`` gives a
    compacted file's :func:`merged_files`."""
    held: set[str] = set()
    if len(names) < 2:
        return held
    for name in names:
        if name.startswith(COMPACTED_PREFIX):
            for old in merged(partition / name):
                with contextlib.suppress(FileNotFoundError):
                    if old[0] in names and old[0] != name and _identity(partition / old[0]) == old:
                        held.add(old[0])
    return held
