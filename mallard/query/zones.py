"""A time zone's UTC offsets as SQL, by the system's zone data (the rules Python uses).

Local time is epoch microseconds plus the zone's offset at that instant, so a
query buckets hours, days and weeks by integer division instead of converting
every timestamp. The offsets come from Python, like the range's bounds and
labels: DuckDB's own zone rules differ for some zones (Casablanca, Vancouver
from 2026...), which would put events in a bucket outside the range.

A zone's changes of offset are found a UTC year at a time (a walk of its days,
0.3 ms), each year once per process: a range of 1970 to 2099 (as long as a query
may ask for) takes 130 of them.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

from mallard.storage.schema import micros

SECONDS_PER_DAY = 86_400
MICROS_PER_SECOND = 1_000_000


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


def utc_offsets(timezone: str, start: dt.datetime, end: dt.datetime) -> tuple[tuple[int, int], ...]:
    """``(from_us, offset_us)`` for each stretch of ``[start, end)`` with one offset, the
    first from ``start``."""
    start_us, end_us = micros(start), micros(end)
    pieces = [(start_us, _offset(zoneinfo.ZoneInfo(timezone), start_us // MICROS_PER_SECOND))]
    for year in range(start.year, end.year + 1):
        for from_us, offset in changes_in_year(timezone, year):
            if start_us < from_us < end_us and offset != pieces[-1][1]:
                pieces.append((from_us, offset))
    return tuple(pieces)


def utc_offset_sql(timezone: str, start: dt.datetime, end: dt.datetime, at: str) -> str:
    """SQL: the offset (microseconds) of ``timezone`` at the TIMESTAMPTZ ``at``, for an
    ``at`` in ``[start, end)``: a binary search over the range's changes of offset."""
    moment = f"epoch_us({at})"

    def search(pieces: tuple[tuple[int, int], ...]) -> str:
        if len(pieces) == 1:
            return str(pieces[0][1])
        middle = len(pieces) // 2
        return (
            f"CASE WHEN {moment} < {pieces[middle][0]} THEN {search(pieces[:middle])} "
            f"ELSE {search(pieces[middle:])} END"
        )

    return search(utc_offsets(timezone, start, end))
