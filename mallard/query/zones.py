"""A time zone's UTC offsets as SQL, by the system's zone data (the rules Python uses).

Local time is epoch microseconds plus the zone's offset at that instant, so a
query buckets hours, days and weeks by integer division instead of converting
every timestamp. The offsets come from Python, like the range's bounds and
labels: DuckDB's own zone rules differ for some zones (Casablanca, Vancouver
from 2026...), which would put events in a bucket outside the range.

A zone's changes of offset are found a UTC year at a time (a walk of its days,
0.3 ms), each year once per process, up to ``WALK_END``. After it, the system's
rules repeat a yearly pattern or none at all: a zone with no change in the last
year walked keeps its offset for good, any other is left to DuckDB's rules.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

from mallard.storage.schema import micros

WALK_END = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
SECONDS_PER_DAY = 86_400
MICROS_PER_SECOND = 1_000_000

# (from, offset) in microseconds; an offset of None: DuckDB's rules from then on
Piece = tuple[int, int | None]


def _offset(zone: zoneinfo.ZoneInfo, second: int) -> int:
    """The zone's UTC offset at ``second`` since the epoch, in microseconds."""
    offset = dt.datetime.fromtimestamp(second, zone).utcoffset()
    return offset // dt.timedelta(microseconds=1)  # type: ignore[operator]


@functools.lru_cache(maxsize=8192)
def changes_in_year(timezone: str, year: int) -> tuple[tuple[int, int], ...]:
    """``(from_us, offset_us)`` for each change of the zone's offset after the first
    instant of the UTC ``year``, up to and including the first instant of the next."""
    zone = zoneinfo.ZoneInfo(timezone)
    start = int(dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp())
    end = int(dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC).timestamp())
    current = _offset(zone, start)
    changes = []
    for day in range(start + SECONDS_PER_DAY, end + 1, SECONDS_PER_DAY):
        if (after := _offset(zone, day)) == current:
            continue
        low, high = day - SECONDS_PER_DAY, day  # the change lies in (low, high]: find its second
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if _offset(zone, middle) == current else (low, middle)
        changes.append((high * MICROS_PER_SECOND, after))
        current = after
    return tuple(changes)


def utc_offsets(timezone: str, start: dt.datetime, end: dt.datetime) -> tuple[Piece, ...]:
    """``(from_us, offset_us)`` for each stretch of ``[start, end)`` with one offset,
    the first from ``start``; ``None`` from ``WALK_END`` on in a zone with a yearly rule."""
    yearly = bool(changes_in_year(timezone, WALK_END.year - 1))
    start_us, end_us, walk_end_us = micros(start), micros(end), micros(WALK_END)
    if yearly and start >= WALK_END:
        return ((start_us, None),)
    first = _offset(zoneinfo.ZoneInfo(timezone), start_us // MICROS_PER_SECOND)
    pieces: list[Piece] = [(start_us, first)]
    for year in range(start.year, min(end.year, WALK_END.year - 1) + 1):
        for from_us, offset in changes_in_year(timezone, year):
            if start_us < from_us < min(end_us, walk_end_us) and offset != pieces[-1][1]:
                pieces.append((from_us, offset))
    if yearly and end > WALK_END:
        pieces.append((walk_end_us, None))
    return tuple(pieces)


def utc_offset_sql(timezone: str, start: dt.datetime, end: dt.datetime, at: str) -> str:
    """SQL: the offset (microseconds) of ``timezone`` at the TIMESTAMPTZ ``at``, for an
    ``at`` in ``[start, end)``: a binary search over the range's changes of offset."""
    moment = f"epoch_us({at})"
    zone = timezone.replace("'", "")  # IANA names, validated by the query model
    by_duckdb = f"(epoch_us(timezone('{zone}', {at})) - {moment})"

    def search(pieces: tuple[Piece, ...]) -> str:
        if len(pieces) == 1:
            offset = pieces[0][1]
            return by_duckdb if offset is None else str(offset)
        middle = len(pieces) // 2
        return (
            f"CASE WHEN {moment} < {pieces[middle][0]} THEN {search(pieces[:middle])} "
            f"ELSE {search(pieces[middle:])} END"
        )

    return search(utc_offsets(timezone, start, end))
