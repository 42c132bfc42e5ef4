"""Per-day (page or event name, visitor) pairs, and when each was seen before.

Visitors per page over a range is a distinct count over every (page, visitor)
pair of the range: millions of pairs in a month of a busy site, and the
slowest part of a dashboard. A pair can recur on any later day, so per-day
counts do not add up. Instead, for every compacted day, this module writes
each pair of the day once (``pairs/site_id=…/date=…/<events file name>``,
``PAIR_SCHEMA``), with ``previously_seen``: the last time the pair occurred
on an earlier day. Over a range starting at ``start``, a pair then counts on
the day where ``previously_seen`` is null or before ``start`` — a filter and a
small GROUP BY instead of a distinct count (:func:`mallard.query.sql.reads_pairs`).
Event names get the same treatment, for the events breakdown, and so do
visits: with each day's pairs, the day's visit rollup is written again with
its ``seen_*`` columns (when the visitor's previous visit started, and their
previous visit from the same source, entry page, country…), which count
visitors in total and per visit dimension the same way.

``previously_seen`` depends on every earlier day, so the site's
``manifest.json`` records the events file each day's pairs (and ``seen_*``
columns) were built against. A query uses the pairs of a day only while
every day from the range's start up to it still has exactly those files
(:func:`rolled_pair_days`); compaction rebuilds the pairs from the first day
that changed (a late file, an erasure, a restored backup) onwards
(:func:`refresh_pairs`). The pairs are derived data: delete ``pairs/`` and
compaction writes them again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa

from mallard.query.sql import (
    day_numbers_sql,
    day_pairs_sql,
    day_steps_sql,
    file_list,
    rollup_sql,
    seen_visits_sql,
)
from mallard.storage.layout import (
    COMPACTED_PREFIX,
    DataLayout,
    dated_partitions,
    day_number,
    day_to_date,
    is_compacted,
)
from mallard.storage.locks import maintenance_lock, site_lock
from mallard.storage.parquet import fsync_dir, fsync_file, write_aside, write_grouped
from mallard.storage.schema import MICROS_PER_DAY, PAIR_SCHEMA, STEP_SCHEMA, VISIT_SCHEMA

MANIFEST = "manifest.json"
VERSION = 3  # a manifest of another version is not current: everything is built again
ROW_GROUP_ROWS = 32 * 1024  # pages and event names in separate row groups, mostly
OWN_ROW_GROUP = 1024  # steps: a value with this many events a day gets row groups of its own
STEP_ENCODING = {  # numbers ascend within a value, times within a visitor: half the size
    "use_dictionary": ["kind", "value"],
    "column_encoding": {name: "DELTA_BINARY_PACKED" for name in ("visitor_number", "timestamp")},
}


@dataclass(frozen=True)
class PairManifest:
    """For which days a site's pairs are current: every day up to ``through``
    (a day number), each built from the events file named in ``days`` (a day
    without events has no entry). ``since`` is the oldest day with events:
    ``previously_seen`` may point at older days that retention deleted since."""

    through: int | None = None
    days: dict[int, str] = field(default_factory=dict)
    since: int | None = None

    def current(self, day: int, names: list[str] | None) -> bool:
        """True when the day's event files (``names``) are what its pairs were built from."""
        if self.through is None or day > self.through:
            return False
        built_from = self.days.get(day)
        if not names:
            return built_from is None
        return len(names) == 1 and names[0] == built_from


def _site_folder(layout: DataLayout, site_id: str) -> Path:
    return layout.pairs / f"site_id={site_id}"


def pair_file(layout: DataLayout, site_id: str, day: int, events_name: str) -> Path:
    """Where the pairs of ``day`` built from its events file ``events_name`` live."""
    return _site_folder(layout, site_id) / f"date={day_to_date(day).isoformat()}" / events_name


def step_file(layout: DataLayout, site_id: str, day: int, events_name: str) -> Path:
    """Where the funnel steps of ``day`` built from its events file ``events_name`` live."""
    folder = layout.steps / f"site_id={site_id}" / f"date={day_to_date(day).isoformat()}"
    return folder / events_name


def manifest_path(layout: DataLayout, site_id: str) -> Path:
    return _site_folder(layout, site_id) / MANIFEST


def read_manifest(path: Path) -> PairManifest:
    """The manifest at ``path``; an empty one when missing or unreadable (nothing is current)."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != VERSION:
            return PairManifest()
        return PairManifest(
            through=_day_number(data["through"]),
            days={_day_number(day): name for day, name in data["days"].items()},
            since=_day_number(data["since"]) if data["since"] else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return PairManifest()


def _day_number(text: str) -> int:
    return day_number(dt.date.fromisoformat(text))


def _staging(layout: DataLayout, kind: str) -> Path:
    """A file in tmp/ to write aside; compaction removes those a crash left behind."""
    return layout.tmp / f"{COMPACTED_PREFIX}{kind}-{uuid.uuid4().hex}.tmp"


def _write_manifest(layout: DataLayout, site_id: str, manifest: PairManifest) -> None:
    assert manifest.through is not None
    data = {
        "version": VERSION,
        "through": day_to_date(manifest.through).isoformat(),
        "since": day_to_date(manifest.since).isoformat() if manifest.since is not None else None,
        "days": {day_to_date(d).isoformat(): n for d, n in sorted(manifest.days.items())},
    }
    staging = _staging(layout, "pairs-manifest")
    staging.write_text(json.dumps(data, indent=1) + "\n")
    fsync_file(staging)
    destination = manifest_path(layout, site_id)
    os.replace(staging, destination)
    fsync_dir(destination.parent)


def rolled_pair_days(
    manifest: PairManifest,
    day_names: dict[int, list[str]],
    busy_days: set[int],
    start_us: int,
    end_us: int,
) -> list[int]:
    """The days of ``[start_us, end_us)`` whose pairs a query reads.

    They are consecutive whole days from the first whole day of the range on,
    each current (see :meth:`PairManifest.current`; ``day_names`` holds the
    event files of the range's days, ``busy_days`` the days with unflushed
    events), and only while the day the range starts in is current too: its
    events before the first rolled day are read from events, and the pairs'
    ``previously_seen`` must know them. Days without events are skipped.
    """
    if manifest.through is None:
        return []

    def current(day: int) -> bool:
        return day not in busy_days and manifest.current(day, day_names.get(day))

    first_day = start_us // MICROS_PER_DAY
    first_whole = -(-start_us // MICROS_PER_DAY)
    if first_day != first_whole and not current(first_day):
        return []
    known = [d for d in (*day_names, *manifest.days) if d >= first_whole]
    rolled: list[int] = []
    # days before the first known one have no events and no pairs: nothing to check
    for day in range(
        min(known, default=first_whole), min(end_us // MICROS_PER_DAY, manifest.through + 1)
    ):
        if not current(day):
            break
        if day in day_names:
            rolled.append(day)
    return rolled


def _day_files(layout: DataLayout, site_id: str) -> dict[int, list[str]]:
    """The site's event file names by day number (days with files only)."""
    found: dict[int, list[str]] = {}
    for day, folder in dated_partitions(layout.events / f"site_id={site_id}"):
        if names := sorted(n for n in os.listdir(folder) if n.endswith(".parquet")):
            found[day_number(day)] = names
    return found


def refresh_pairs(
    layout: DataLayout,
    site_id: str,
    before: dt.date,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Make the site's pairs current for its compacted days before ``before``.

    Pairs are built day by day, oldest first, from the first day whose events
    changed since (or the first new day), and stop before the first day that
    is not compacted yet. Each day is swapped in with the manifest, under the
    site's exclusive lock, so a query sees the old or the new state, never a
    mix. Returns the days built. Blocking.
    """
    with maintenance_lock(layout, site_id):
        files = _day_files(layout, site_id)
        manifest = read_manifest(manifest_path(layout, site_id))
        through = _compacted_through(files, day_number(before))
        # days before the oldest events went (retention): their pairs are dropped,
        # and queries count no occurrence before ``since`` (nothing to rebuild)
        since = min(files, default=None)
        oldest = through + 1 if since is None else since
        changed = [
            day
            for day in {*files, *manifest.days}
            if oldest <= day <= through
            and not (  # current, and its steps not deleted since (a day with events)
                manifest.current(day, files.get(day))
                and step_file(layout, site_id, day, manifest.days[day]).exists()
            )
        ]
        if not changed and (manifest.through, manifest.since) == (through, since):
            return 0
        first = min(changed, default=through + 1)
        kept = {d: n for d, n in manifest.days.items() if oldest <= d < first}
        todo = [d for d in sorted(files) if first <= d <= through]
        _site_folder(layout, site_id).mkdir(parents=True, exist_ok=True)
        for index, day in enumerate(todo, start=1):
            name = files[day][0]
            staged = _Staged(*(_staging(layout, kind) for kind in ("pairs", "visits", "steps")))
            _build_day(layout, site_id, day, name, kept, staged)
            kept[day] = name
            rollup = layout.rollup(site_id, day_to_date(day), name)
            rollup.parent.mkdir(parents=True, exist_ok=True)
            derived = {
                staged.pairs: pair_file(layout, site_id, day, name),
                staged.steps: step_file(layout, site_id, day, name),
            }
            for destination in derived.values():
                destination.parent.mkdir(parents=True, exist_ok=True)
            with site_lock(layout, site_id, exclusive=True):
                os.replace(staged.visits, rollup)
                for staging, destination in derived.items():
                    os.replace(staging, destination)
                    for other in destination.parent.glob("*.parquet"):
                        if other != destination:
                            other.unlink()
                _write_manifest(layout, site_id, PairManifest(day, dict(kept), since))
            if progress:
                progress(index, len(todo))
        with site_lock(layout, site_id, exclusive=True):
            _write_manifest(layout, site_id, PairManifest(through, kept, since))
            _remove_unlisted(layout, site_id, kept)
        return len(todo)


def _compacted_through(files: dict[int, list[str]], before: int) -> int:
    """The last day before day ``before`` up to which every day with files is compacted."""
    for day in sorted(files):
        if day >= before:
            break
        if not is_compacted(files[day]):
            return day - 1
    return before - 1


def forget_pairs_from(layout: DataLayout, site_id: str, day: int) -> None:
    """Drop the site's pairs of ``day`` and every later day (their ``previously_seen``
    may point at rows being erased); compaction builds them again. Call it under
    the site's exclusive lock."""
    manifest = read_manifest(manifest_path(layout, site_id))
    if manifest.through is None:
        return
    kept = {d: n for d, n in manifest.days.items() if d < day}
    through = min(manifest.through, day - 1)
    _write_manifest(layout, site_id, PairManifest(through, kept, manifest.since))
    _remove_unlisted(layout, site_id, kept)


class _Staged(NamedTuple):
    """Where a day's derived files are written before they are swapped in."""

    pairs: Path
    visits: Path
    steps: Path


def _build_day(
    layout: DataLayout,
    site_id: str,
    day: int,
    name: str,
    earlier: dict[int, str],
    staged: _Staged,
) -> None:
    """Write the pairs, the visit rollup with its ``seen_*`` columns and the funnel steps
    of ``day`` (from its events file ``name``) to ``staged``; ``earlier``: the days
    before."""
    events = f"read_parquet({file_list([str(layout.partition(site_id, day) / name)])})"

    def rollup(d: int, n: str) -> Path:
        return layout.rollup(site_id, day_to_date(d), n)

    def earlier_files(path: Callable[[int, str], Path]) -> str | None:
        paths = [str(path(d, n)) for d, n in sorted(earlier.items())]
        return f"read_parquet({file_list(paths)})" if paths else None

    # the day's visits as compaction wrote them beside its events (rebuilt if lost)
    day_visits = rollup(day, name)
    if day_visits.exists():
        visits = f"read_parquet({file_list([str(day_visits)])})"
    else:
        visits = f"({rollup_sql(events)})"
    earlier_steps = earlier_files(partial(step_file, layout, site_id))
    with duckdb.connect(config={"threads": 1}) as connection:

        def table(sql: str, schema: pa.Schema) -> pa.Table:
            return connection.sql(sql).to_arrow_table().select(schema.names).cast(schema)

        connection.execute(f"CREATE TABLE numbers AS {day_numbers_sql(events, earlier_steps)}")
        for sql, schema, staging in (
            (
                day_pairs_sql(events, earlier_files(partial(pair_file, layout, site_id))),
                PAIR_SCHEMA,
                staged.pairs,
            ),
            (seen_visits_sql(visits, earlier_files(rollup)), VISIT_SCHEMA, staged.visits),
        ):
            write_aside(table(sql, schema), staging, row_group_size=ROW_GROUP_ROWS)
        steps = table(day_steps_sql(events, "numbers"), STEP_SCHEMA)
        write_grouped(
            steps,
            staged.steps,
            ["kind", "value"],
            own_group=OWN_ROW_GROUP,
            max_rows=ROW_GROUP_ROWS,
            **STEP_ENCODING,
        )


def _remove_unlisted(layout: DataLayout, site_id: str, days: dict[int, str]) -> None:
    """Remove the pair and step folders of days the manifest does not list (their events
    changed or went)."""
    listed = {f"date={day_to_date(d).isoformat()}" for d in days}
    for area in (layout.pairs, layout.steps):
        for folder in (area / f"site_id={site_id}").glob("date=*"):
            if folder.name not in listed:
                shutil.rmtree(folder, ignore_errors=True)
