"""Per-site locks between queries, compaction, retention and erasure.

Both are ``flock``s on files in the site's events folder, so they work between
threads (each use opens its own descriptor) and between worker processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from mallard.storage.layout import DataLayout


@contextlib.contextmanager
def site_lock(layout: DataLayout, site_id: str, *, exclusive: bool = False) -> Iterator[None]:
    """Readers share it while they list and read a site's files; a swap takes it alone."""
    with _flock(layout, site_id, ".lock", fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def maintenance_lock(layout: DataLayout, site_id: str) -> Iterator[None]:
    """One rewrite of a site's files at a time: compaction, retention or erasure.

    Held from reading the files to swapping the result in, so one rewrite never
    brings back what another removed.
    """
    with _flock(layout, site_id, ".maintenance", fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def _flock(layout: DataLayout, site_id: str, name: str, mode: int) -> Iterator[None]:
    site_dir = layout.events / f"site_id={site_id}"
    try:
        fd = os.open(site_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # no data for this site yet: nothing to protect
        yield
        return
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)
