"""A time zone's UTC offsets as SQL, by the system's zone data (the rules Python uses).

Local time is epoch microseconds plus the zone's offset at that instant, so a
query buckets hours, days and weeks by integer division instead of converting
every timestamp. The offsets come from Python, like the range's bounds and
labels: DuckDB's own zone rules differ for some zones (Casablanca, Vancouver
from 2026...), which would put events in a bucket outside the range.

A zone's transitions are found once per process, by a walk from the earliest
day a query can ask for up to ``WALK_END``. After it, the system's rules repeat
a yearly pattern or none at all: a zone with no transition in the walk's last
year keeps its last offset for good, any other is left to DuckDB's rules.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import zoneinfo

from mallard.query.model import FIRST_DAY
from mallard.storage.schema import micros

WALK_START = dt.datetime.combine(FIRST_DAY - dt.timedelta(days=1), dt.time(), dt.UTC)
WALK_END = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
SECONDS_PER_DAY = 86_400
MICROS_PER_SECOND = 1_000_000

# (from, offset) in microseconds; an offset of None: DuckDB's rules from then on
Piece = tuple[int, int | None]


@functools.cache
def transitions(timezone: str) -> tuple[Piece, ...]:
    """``(from_us, offset_us)`` for each stretch of ``[WALK_START, ∞)`` with one offset."""
    zone = zoneinfo.ZoneInfo(timezone)
    from_timestamp = dt.datetime.fromtimestamp

    def offset(second: int) -> dt.timedelta:
        return from_timestamp(second, zone).utcoffset()  # type: ignore[return-value]

    start, end = int(WALK_START.timestamp()), int(WALK_END.timestamp())
    current = offset(start)
    changes = [(start, current)]
    for day in range(start + SECONDS_PER_DAY, end + 1, SECONDS_PER_DAY):
        if (after := offset(day)) == current:
            continue
        low, high = day - SECONDS_PER_DAY, day  # the change lies in (low, high]: find its second
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if offset(middle) == current else (low, middle)
        changes.append((high, after))
        current = after
    pieces: list[Piece] = [
        (second * MICROS_PER_SECOND, change // dt.timedelta(microseconds=1))
        for second, change in changes
    ]
    if changes[-1][0] > end - 366 * SECONDS_PER_DAY:  # a yearly rule goes on after the walk
        pieces.append((end * MICROS_PER_SECOND, None))
    return tuple(pieces)


def utc_offsets(timezone: str, start: dt.datetime, end: dt.datetime) -> tuple[Piece, ...]:
    """The pieces of :func:`transitions` that ``[start, end)`` overlaps, the first one
    from ``start``."""
    pieces = transitions(timezone)
    start_us, end_us = micros(start), micros(end)
    first = max(bisect.bisect_right(pieces, start_us, key=lambda p: p[0]) - 1, 0)
    last = bisect.bisect_left(pieces, end_us, key=lambda p: p[0])
    return ((start_us, pieces[first][1]), *pieces[first + 1 : max(last, first + 1)])


def utc_offset_sql(timezone: str, start: dt.datetime, end: dt.datetime, at: str) -> str:
    """SQL: the offset (microseconds) of ``timezone`` at the TIMESTAMPTZ ``at``, for an
    ``at`` in ``[start, end)``: a binary search over the range's transitions."""
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
