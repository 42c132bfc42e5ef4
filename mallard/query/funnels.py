"""Funnels: visitors per step of an ordered list of pages and events.

A visitor enters at their first step-1 event of the range (time t1); they reach
step k with their first step-k event at or after the time they reached step
k-1, and no later than ``t1 + window``. An event at that same time counts only
if it is not itself a step-(k-1) event: one pageview of ``/`` is not ``page:/``
twice (events share a time when it is floored to the hour, so the order within
it is unknown).

Two ways to count, with the same counts (the tests compare both with a
reference): :func:`funnel_sql` over the range's events, with the query's
filters, hashes every candidate event's visitor id once per step. Without
filters, :func:`count_from_steps` reads the days whose funnel steps are current
(``data_dir/steps/``, :mod:`mallard.storage.pairs`) as (steps matched, visitor
number, time): only the row groups of the steps' values, and visitor numbers
that index arrays instead of hash tables. The range's other events (a partial
first day, today's, the unflushed ones) come from DuckDB, each with the number
its visitor has in those days' steps, or a new one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mallard.query.behaviour import percent
from mallard.query.engine import QueryEngine, Snapshot
from mallard.query.model import Query, QueryError
from mallard.query.sql import Parameters, base_ctes, events_cte, needs_sessions, where_sql
from mallard.query.threads import low_priority_pool

MAX_FUNNEL_STEPS = 8
STEP = re.compile(r"(page|event):(.+)")
NEVER = np.iinfo(np.int64).max  # not reached
SPARSE = 4  # numbers spread wider than this many per entrant: entrants are sorted instead
READERS = low_priority_pool(max(os.cpu_count() or 1, 1), "mallard-steps")
SCRATCH_BYTES = 32 * 1024 * 1024  # the largest array kept for the next funnel
CANDIDATE_BYTES = 64  # memory per candidate event read from steps, its arrays' and work's
_SPARE: list[dict[str, np.ndarray]] = []  # arrays of funnels that are done, for the next ones
_SPARE_LOCK = threading.Lock()


@dataclass(frozen=True)
class FunnelStep:
    kind: str  # "page" or "event"
    value: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def prefix(self) -> str | None:
        """The page prefix of a ``page:/blog*`` step."""
        return self.value[:-1] if self.kind == "page" and self.value.endswith("*") else None

    def event_sql(self, params: Parameters, alias: str = "") -> str:
        """SQL: an event (``alias``'s columns) is this step."""
        prefix = f"{alias}." if alias else ""
        if self.kind == "event":
            return f"{prefix}event_name = {params.add(self.value)}"
        if self.prefix is not None:
            return (
                f"({prefix}event_name = 'pageview' AND "
                f"starts_with({prefix}pathname, {params.add(self.prefix)}))"
            )
        return f"({prefix}event_name = 'pageview' AND {prefix}pathname = {params.add(self.value)})"

    def _step_row(self) -> tuple[str, str | None]:
        """The (kind, value) of this step's rows in ``STEP_SCHEMA``; None: any value."""
        if self.kind == "page":
            return "page", self.value
        if self.value == "pageview":
            return "page", None  # every pageview is a page row
        return "name", self.value

    def row_mask(self, kinds: pa.Array, values: pa.Array) -> pa.Array:
        """Which step rows (their kinds and values) are this step."""
        kind, value = self._step_row()
        same_kind = pc.equal(kinds, kind)
        if value is None:
            return same_kind
        if self.prefix is not None:
            matches = pc.starts_with(values, self.prefix)
        else:
            matches = pc.equal(values, value)
        return pc.and_(same_kind, pc.fill_null(matches, False))

    def may_hold(self, kinds: tuple[str, str], values: tuple[str, str] | None) -> bool:
        """Whether a row group whose kinds and values lie within these bounds (None:
        unknown) may hold rows of this step."""
        kind, value = self._step_row()
        if not kinds[0] <= kind <= kinds[1]:
            return False
        if value is None or values is None:
            return True
        if self.prefix is not None:  # the values with a prefix follow each other
            return values[1] >= self.prefix and (
                values[0] <= self.prefix or values[0].startswith(self.prefix)
            )
        return values[0] <= value <= values[1]


def parse_steps(text: str) -> tuple[FunnelStep, ...]:
    """``page:/pricing,event:signup`` -> steps; a page step may end in ``*`` (prefix)."""
    steps = []
    for part in text.split(","):
        match = STEP.fullmatch(part.strip())
        if not match:
            raise QueryError(f"funnel step {part!r} must be page:/path or event:name")
        steps.append(FunnelStep(match[1], match[2]))
    if not 2 <= len(steps) <= MAX_FUNNEL_STEPS:
        raise QueryError(f"a funnel has 2 to {MAX_FUNNEL_STEPS} steps")
    return tuple(steps)


async def visitors_per_step(
    engine: QueryEngine, query: Query, steps: tuple[FunnelStep, ...], window_seconds: int
) -> list[int]:
    """The funnel's visitors at each step; from the funnel steps without filters."""
    if query.filters:
        return await count_with_sql(engine, query, steps, window_seconds)
    return await count_from_steps(engine, query, steps, window_seconds)


# --- over events, with filters ---


async def count_with_sql(
    engine: QueryEngine, query: Query, steps: tuple[FunnelStep, ...], window_seconds: int
) -> list[int]:
    _, rows = await engine.fetch(
        *funnel_sql(query, steps, window_seconds),
        site_id=query.site_id,
        start=query.date_range.start,
        end=query.date_range.end,
    )
    counts = dict(rows)
    return [counts.get(index, 0) for index in range(len(steps))]


def funnel_sql(
    query: Query, steps: tuple[FunnelStep, ...], window_seconds: int
) -> tuple[str, dict[str, Any]]:
    """Visitors per step (``step``: its index, ``visitors``) over the range's events."""
    params = Parameters()
    ctes = [base_ctes(query, params, sessions=needs_sessions(query))]
    any_step = " OR ".join(step.event_sql(params) for step in steps)
    where = where_sql(query.filters, params, query.timezone)
    ctes.append(  # only events that are some step: every join below reads them alone
        f"candidates AS (SELECT * FROM rows WHERE ({any_step}) AND {where})"
    )
    ctes.append(
        f"""s0 AS (SELECT visitor_id, min(timestamp) AS reached, min(timestamp) AS entered
        FROM candidates WHERE {steps[0].event_sql(params)} GROUP BY visitor_id)"""
    )
    window = params.add(window_seconds)
    for index, step in enumerate(steps[1:], start=1):
        ctes.append(
            f"""s{index} AS (
        SELECT c.visitor_id, min(c.timestamp) AS reached, any_value(p.entered) AS entered
        FROM candidates c JOIN s{index - 1} p USING (visitor_id)
        WHERE {step.event_sql(params, "c")}
          AND (c.timestamp > p.reached
               OR (c.timestamp = p.reached AND NOT {steps[index - 1].event_sql(params, "c")}))
          AND c.timestamp <= p.entered + to_seconds({window})
        GROUP BY c.visitor_id)"""
        )
    counts = " UNION ALL ".join(
        f"SELECT {i} AS step, count(*) AS visitors FROM s{i}" for i in range(len(steps))
    )
    return ",\n    ".join(ctes) + f"\nSELECT step, visitors FROM ({counts}) ORDER BY step", (
        params.values
    )


# --- from the funnel steps ---


async def count_from_steps(
    engine: QueryEngine, query: Query, steps: tuple[FunnelStep, ...], window_seconds: int
) -> list[int]:
    """Visitors per step from the funnel steps of the days that have current ones, and
    from events for the others; with :func:`count_with_sql` when no day has them or
    the steps' events would need more memory than ``query_memory_mb``."""
    most = engine.memory_mb * 1024 * 1024 // CANDIDATE_BYTES  # candidate events at most

    def count(cursor: duckdb.DuckDBPyConnection, snapshot: Snapshot) -> list[int] | None:
        plans = [_plan_steps(path, steps) for path in snapshot.rolled.values()]
        rolled = sum(plan.rows for plan in plans)
        if not plans or rolled > most:
            return None
        reads = [READERS.submit(_read_steps, plan, steps) for plan in plans]
        lookups = []
        try:
            fresh = _fresh_candidates(cursor, query, steps, most - rolled + 1)
            if len(fresh["us"]) > most - rolled:
                return None
            ids, fresh_visitors = np.unique(fresh["visitor_id"], return_inverse=True)
            lookups = [READERS.submit(_visitor_numbers, plan, ids) for plan in plans]
        finally:
            parts = [part for future in reads for part in future.result()]
            found = [future.result() for future in lookups]
        # a fresh visitor has the number the steps give them, or a new one
        numbers = np.full(len(ids), -1, np.int64)
        for positions, numbered in found:
            numbers[positions] = numbered
        new = numbers == -1
        top = max((int(part[1].max(initial=0)) for part in parts), default=0)
        top = max(top, int(numbers.max(initial=0)))
        numbers[new] = top + 1 + np.arange(np.count_nonzero(new))
        parts.append((fresh["steps"], numbers[fresh_visitors], fresh["us"]))
        return count_visitors(parts, len(steps), window_seconds * 1_000_000)

    counts = await engine.compute(
        count,
        ("funnel", steps, window_seconds, query.date_range.start, query.date_range.end),
        site_id=query.site_id,
        start=query.date_range.start,
        end=query.date_range.end,
    )
    if counts is None:
        return await count_with_sql(engine, query, steps, window_seconds)
    return counts


def _fresh_candidates(
    cursor: duckdb.DuckDBPyConnection, query: Query, steps: tuple[FunnelStep, ...], limit: int
) -> dict[str, np.ndarray]:
    """The range's events that some step matches, from the engine's ``fresh_source``
    (``limit`` at most): ``visitor_id``, ``us`` (the time) and ``steps`` (bit k: step k
    matches)."""
    params = Parameters()
    matched = " + ".join(
        f"CASE WHEN {step.event_sql(params)} THEN {1 << index} ELSE 0 END"
        for index, step in enumerate(steps)
    )
    sql = f"""WITH {events_cte(query, params, "fresh_events", "fresh_source")}
    SELECT visitor_id, epoch_us(timestamp) AS us, ({matched})::INTEGER AS steps
    FROM fresh_events WHERE ({matched}) > 0 LIMIT {int(limit)}"""
    columns = cursor.execute(sql, params.values).fetchnumpy()
    return {name: np.asarray(values) for name, values in columns.items()}


def _visitor_numbers(plan: _StepsPlan, visitor_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of the sorted ``visitor_ids`` a steps file numbers (their positions), and
    their numbers."""
    file = plan.open()
    pure, mixed = [], []
    for group, _, kinds, _ in plan.groups:
        if kinds == ("visitor", "visitor"):
            pure.append(group)
        elif kinds is None or kinds[0] <= "visitor" <= kinds[1]:
            mixed.append(group)
    columns = ["visitor_id", "visitor_number"]
    tables = [file.read_row_groups(pure, columns, use_threads=False)]
    if mixed:
        table = file.read_row_groups(mixed, ["kind", *columns], use_threads=False)
        tables.append(table.filter(pc.equal(table["kind"], "visitor")).select(columns))
    table = pa.concat_tables(tables)
    ids = table["visitor_id"].to_numpy()
    numbers = table["visitor_number"].to_numpy()
    if not len(ids):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not np.all(ids[1:] >= ids[:-1]):  # sorted as written, unless written otherwise
        order = np.argsort(ids)
        ids, numbers = ids[order], numbers[order]
    at = np.minimum(np.searchsorted(ids, visitor_ids), len(ids) - 1)
    found = ids[at] == visitor_ids
    return np.flatnonzero(found), numbers[at[found]]


# events that some step matches: the steps each matches (bit k: step k; one int when
# they all match the same), their visitor's number, their time in microseconds
Candidates = tuple[np.ndarray | int, np.ndarray, np.ndarray]


Bounds = tuple[str, str] | None
RowGroups = list[tuple[int, int, Bounds, Bounds]]  # each row group's rows, kinds and values


@dataclass(frozen=True)
class _StepsPlan:
    """What to read of a steps file (its footer and row ``groups`` as read before): row
    groups of one value, by the steps they match, and the others that may hold a step;
    ``rows`` in all."""

    path: str
    metadata: pq.FileMetaData
    groups: RowGroups
    by_bits: dict[int, list[int]]
    mixed: list[int]
    rows: int

    def open(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.path, metadata=self.metadata)


def _plan_steps(path: str, steps: tuple[FunnelStep, ...]) -> _StepsPlan:
    info = os.stat(path)
    metadata, groups = _footer(path, (info.st_ino, info.st_mtime_ns, info.st_size))
    pure: dict[tuple[str, str], list[int]] = {}  # (kind, value) -> row groups
    mixed = []
    rows = {group: count for group, count, _, _ in groups}
    for group, _, kinds, values in groups:
        if kinds is None:
            mixed.append(group)
        elif values is not None and kinds[0] == kinds[1] and values[0] == values[1]:
            pure.setdefault((kinds[0], values[0]), []).append(group)
        elif any(step.may_hold(kinds, values) for step in steps):
            mixed.append(group)
    by_bits: dict[int, list[int]] = {}
    if pure:
        keys = list(pure)
        matched = _steps_matched(steps, *(pa.array(column) for column in zip(*keys, strict=True)))
        for key, bits in zip(keys, matched.tolist(), strict=True):
            if bits:
                by_bits.setdefault(bits, []).extend(pure[key])
    read = [*mixed, *(group for groups in by_bits.values() for group in groups)]
    rows_read = sum(rows[group] for group in read)
    return _StepsPlan(path, metadata, groups, by_bits, mixed, rows_read)


def _read_steps(plan: _StepsPlan, steps: tuple[FunnelStep, ...]) -> list[Candidates]:
    """The rows of a steps file that some step matches, in parts. A row group of one
    kind and value is read without them."""
    file = plan.open()
    parts: list[Candidates] = []
    for bits, groups in plan.by_bits.items():
        table = file.read_row_groups(groups, ["visitor_number", "timestamp"], use_threads=False)
        parts.append((bits, *_numbers_and_times(table)))
    if plan.mixed:
        table = file.read_row_groups(plan.mixed, use_threads=False)
        matched = _steps_matched(steps, table["kind"], table["value"])
        keep = matched != 0
        numbers, times = _numbers_and_times(table)
        parts.append((matched[keep], numbers[keep], times[keep]))
    return parts


def _steps_matched(
    steps: tuple[FunnelStep, ...],
    kinds: pa.Array | pa.ChunkedArray,
    values: pa.Array | pa.ChunkedArray,
) -> np.ndarray:
    """For each step row (its kind and value), the steps it is: bit k for step k."""
    matched = np.zeros(len(kinds), np.int32)
    for index, step in enumerate(steps):
        mask = step.row_mask(kinds, values).to_numpy(zero_copy_only=False)
        matched |= mask.astype(np.int32) << index
    return matched


@functools.lru_cache(maxsize=1024)
def _footer(path: str, version: tuple[int, int, int]) -> tuple[pq.FileMetaData, RowGroups]:
    """The footer and row group bounds of ``path`` as it is at ``version`` (its inode,
    modification time and size: a day's steps are rebuilt under the same name)."""
    metadata = pq.read_metadata(path)
    kind_at, value_at = (
        metadata.schema.to_arrow_schema().get_field_index(n) for n in ("kind", "value")
    )
    groups = []
    for group in range(metadata.num_row_groups):
        columns = metadata.row_group(group)
        kinds, values = (_bounds(columns.column(at).statistics) for at in (kind_at, value_at))
        groups.append((group, columns.num_rows, kinds, values))
    return metadata, groups


def _bounds(statistics: Any) -> tuple[str, str] | None:
    """A string column chunk's (min, max), or None when unknown or with nulls."""
    if statistics is None or not statistics.has_min_max or statistics.null_count != 0:
        return None
    return statistics.min, statistics.max


def _numbers_and_times(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    times = table["timestamp"].combine_chunks().cast(pa.int64())
    return table["visitor_number"].to_numpy(), times.to_numpy()


def count_visitors(parts: list[Candidates], steps: int, window_us: int) -> list[int]:
    """Visitors per step, as :func:`funnel_sql` counts them, from candidate events in
    parts. The parts stay apart: only arrays over the entrants are large."""
    with _scratch() as scratch:
        return _count_visitors(scratch, parts, steps, window_us)


def _count_visitors(
    scratch: dict[str, np.ndarray], parts: list[Candidates], steps: int, window_us: int
) -> list[int]:
    slots, entrants = _entrant_slots(scratch, parts)
    if not entrants:
        return [0] * steps
    # slot -1 (visitors who never entered) is the last one, which stays NEVER
    entered = _filled(scratch, "entered", entrants + 1, NEVER, np.int64)
    for (bits, _, when), who in zip(parts, slots, strict=True):
        if (on := _matching(bits, 0)) is not None:
            np.minimum.at(entered, who[on], when[on])
    reached = entered
    counts = [entrants]
    for step in range(1, steps):
        following = _filled(scratch, f"reached-{step % 2}", entrants + 1, NEVER, np.int64)
        for (bits, _, part_times), part_slots in zip(parts, slots, strict=True):
            if (on := _matching(bits, step)) is None:
                continue
            who, when = part_slots[on], part_times[on]
            after = reached[who]
            going = after != NEVER
            who, when, after = who[going], when[going], after[going]
            counted = when > after
            # at the same time only an event that is not the step before too
            if isinstance(bits, int):
                if not (bits >> (step - 1)) & 1:
                    counted |= when == after
            else:
                counted |= (when == after) & (((bits[on][going] >> (step - 1)) & 1) == 0)
            counted &= when <= entered[who] + window_us
            np.minimum.at(following, who[counted], when[counted])
        reached = following
        counts.append(int(np.count_nonzero(reached != NEVER)))
    return counts


def _matching(bits: np.ndarray | int, step: int) -> np.ndarray | slice | None:
    """Which events of a part (the steps they match) match ``step``: a mask, all
    (a slice), or none."""
    if isinstance(bits, int):
        return slice(None) if (bits >> step) & 1 else None
    return ((bits >> step) & 1) != 0


def _entrant_slots(
    scratch: dict[str, np.ndarray], parts: list[Candidates]
) -> tuple[list[np.ndarray], int]:
    """For each event of each part, the slot of its visitor among those with a step-1
    event (0 to n-1), or -1; and n. Through a table over the visitors' numbers, or by
    sorting the entrants' numbers when the numbers are too sparse for one."""
    numbers = [part_numbers for _, part_numbers, _ in parts if len(part_numbers)]
    firsts = [
        part_numbers[on]
        for bits, part_numbers, _ in parts
        if (on := _matching(bits, 0)) is not None
    ]
    entering = sum(len(part) for part in firsts)
    if not entering:
        return [np.full(len(part[1]), -1, np.int32) for part in parts], 0
    low = min(int(part.min()) for part in numbers)
    high = max(int(part.max()) for part in numbers)
    if high - low >= SPARSE * entering + 1024:
        present = np.unique(np.concatenate(firsts))
        slots = []
        for _, part_numbers, _ in parts:
            at = np.minimum(np.searchsorted(present, part_numbers), len(present) - 1)
            slots.append(np.where(present[at] == part_numbers, at, -1).astype(np.int32))
        return slots, len(present)
    table = _filled(scratch, "table", high - low + 1, -1, np.int32)
    for part in firsts:
        table[part - low] = 0
    present = np.flatnonzero(table == 0)
    table[present] = np.arange(len(present), dtype=np.int32)
    return [table[part_numbers - low] for _, part_numbers, _ in parts], len(present)


@contextlib.contextmanager
def _scratch() -> Iterator[dict[str, np.ndarray]]:
    """Arrays for one funnel at a time, kept for the next: touching fresh memory costs
    a page fault per 4 KiB, more than the funnel's work on it. There are as many sets
    as funnels ever ran at once."""
    with _SPARE_LOCK:
        arrays = _SPARE.pop() if _SPARE else {}
    try:
        yield arrays
    finally:
        with _SPARE_LOCK:
            _SPARE.append(arrays)


def _filled(
    scratch: dict[str, np.ndarray], name: str, size: int, value: int, dtype: type
) -> np.ndarray:
    """``np.full(size, value, dtype)``, in the ``scratch`` array ``name`` unless larger
    than ``SCRATCH_BYTES``."""
    if size * np.dtype(dtype).itemsize > SCRATCH_BYTES:
        return np.full(size, value, dtype)
    array = scratch.get(name)
    if array is None or len(array) < size or array.dtype != dtype:
        array = scratch[name] = np.empty(size, dtype)
    view = array[:size]
    view.fill(value)
    return view


def funnel_result(steps: tuple[FunnelStep, ...], counts: list[int]) -> list[dict]:
    first = counts[0] if counts else 0
    result = []
    previous = None
    for index, (step, visitors) in enumerate(zip(steps, counts, strict=True)):
        result.append(
            {
                "step": index + 1,
                "name": step.label,
                "visitors": visitors,
                "dropoff": 0 if previous is None else previous - visitors,
                "conversion_rate": percent(visitors, first),
            }
        )
        previous = visitors
    return result
