"""What ingestion dropped, and why: counts per site, UTC day and reason, kept on disk.

Each server process counts its drops in memory, per (site, day), as
(reason, bot user agent) -> events, and writes each (site, day) whose counts
changed as one small Parquet file of its own, replaced every time:
``dropped/site_id=<site>/date=<day>/<writer id>.parquet`` holds that writer's
running totals. A day therefore has one file per process that dropped
something on it, and a crash loses at most the counts since the last write.
No IP address is involved; the user agent is kept only for bots.

:func:`report` sums the files of a site's days with DuckDB, with this
process's counts not yet written taking the place of its own files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import trio

from mallard.storage.layout import DataLayout, day_to_date
from mallard.storage.parquet import write_parquet_atomically

if TYPE_CHECKING:
    from mallard.query.engine import QueryEngine

log = logging.getLogger("mallard.dropped")

REASONS = ("invalid", "bot", "rate_limited", "origin", "back_pressure")
INVALID, BOT, RATE_LIMITED, ORIGIN, BACK_PRESSURE = REASONS
MAX_USER_AGENTS = 1000  # distinct bot user agents per site and day; more count as OTHER_AGENTS
MAX_AGENT_LENGTH = 512
OTHER_AGENTS = "(other)"
SECONDS_PER_DAY = 86_400
SCHEMA = pa.schema([("reason", pa.string()), ("user_agent", pa.string()), ("events", pa.int64())])

Partition = tuple[str, int]  # (site id, UTC day number)
Counts = dict[tuple[str, str], int]  # (reason, bot user agent or "") -> events


class DropLog:
    """One process's drop counts: recorded cheaply, written per (site, day)."""

    def __init__(
        self, layout: DataLayout, writer_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.layout = layout
        self.file_name = f"{writer_id}.parquet"
        self._clock = clock
        self._partitions: dict[Partition, Counts] = {}
        self._dirty: set[Partition] = set()

    def record(self, reason: str, site_id: str, user_agent: str = "", count: int = 1) -> None:
        """Count ``count`` events of ``site_id`` dropped for ``reason`` (bots: with their UA)."""
        partition = (site_id, int(self._clock()) // SECONDS_PER_DAY)
        counts = self._partitions.get(partition)
        if counts is None:
            counts = self._partitions[partition] = {}
        key = (reason, user_agent[:MAX_AGENT_LENGTH])
        if user_agent and key not in counts and len(counts) >= MAX_USER_AGENTS:
            key = (reason, OTHER_AGENTS)
        counts[key] = counts.get(key, 0) + count
        self._dirty.add(partition)

    def held(self, site_id: str, first: int, last: int) -> dict[int, Counts]:
        """Counts of the site's days ``first``..``last`` in memory (they supersede our files)."""
        return {
            day: dict(counts)
            for (site, day), counts in self._partitions.items()
            if site == site_id and first <= day <= last
        }

    def path(self, site_id: str, day: int) -> Path:
        return partition_dir(self.layout, site_id, day) / self.file_name

    async def persist(self) -> None:
        """Write every (site, day) whose counts changed since the last write."""
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        tables = [(partition, counts_table(self._partitions[partition])) for partition in dirty]
        started = time.perf_counter()
        try:
            await trio.to_thread.run_sync(self._write, tables)
        except Exception as error:  # counts are diagnostics: never stop ingestion for them
            self._dirty |= dirty
            log.error(
                "could not write dropped-event counts, retrying later: %s",
                error,
                extra={"partitions": len(dirty), "error": str(error)},
            )
            return
        except BaseException:
            self._dirty |= dirty
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info(
            "wrote dropped-event counts of %d site days in %.1f ms",
            len(tables),
            elapsed_ms,
            extra={"files": len(tables), "duration_ms": elapsed_ms},
        )
        today = int(self._clock()) // SECONDS_PER_DAY
        for partition in [p for p in self._partitions if p[1] < today and p not in self._dirty]:
            del self._partitions[partition]  # its day is over and its file complete

    def _write(self, tables: list[tuple[Partition, pa.Table]]) -> None:
        for index, ((site_id, day), table) in enumerate(tables):
            staging = self.layout.tmp / f"dropped-{index}-{self.file_name}.tmp"
            write_parquet_atomically(table, self.path(site_id, day), staging)

    async def persist_every(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self.persist()


def partition_dir(layout: DataLayout, site_id: str, day: int) -> Path:
    return layout.dropped / f"site_id={site_id}" / f"date={day_to_date(day).isoformat()}"


def counts_table(counts: Counts) -> pa.Table:
    reasons, agents, events = [], [], []
    for (reason, agent), count in sorted(counts.items()):
        reasons.append(reason)
        agents.append(agent or None)
        events.append(count)
    return pa.table([reasons, agents, events], schema=SCHEMA)


# --- the report ---


def _day_number(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def utc_days(start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    """The first and last UTC day (numbers) that ``[start, end)`` touches."""
    last = end - dt.timedelta(microseconds=1)
    return _day_number(start.astimezone(dt.UTC).date()), _day_number(last.astimezone(dt.UTC).date())


def files_to_read(
    layout: DataLayout, site_id: str, first: int, last: int, superseded: set[Path]
) -> list[str]:
    """The site's drop files of days ``first``..``last``, except ``superseded`` ones."""
    site_dir = layout.dropped / f"site_id={site_id}"
    files = []
    with contextlib.suppress(FileNotFoundError), os.scandir(site_dir) as partitions:
        for partition in partitions:
            try:
                day = _day_number(dt.date.fromisoformat(partition.name.removeprefix("date=")))
            except ValueError:
                continue
            if first <= day <= last:
                folder = Path(partition.path)
                files += [
                    str(folder / name)
                    for name in os.listdir(folder)
                    if name.endswith(".parquet") and folder / name not in superseded
                ]
    return sorted(files)


def drops_sql(with_files: bool) -> str:
    """A ``drops(day, reason, user_agent, events)`` CTE over the files and held counts."""
    held = (
        "SELECT unnest($days::DATE[]) AS day, unnest($reasons::VARCHAR[]) AS reason, "
        "unnest($agents::VARCHAR[]) AS user_agent, unnest($events::BIGINT[]) AS events"
    )
    if with_files:
        held = (
            "SELECT CAST(date AS DATE) AS day, reason, user_agent, events "
            "FROM read_parquet($files, hive_partitioning = true) UNION ALL " + held
        )
    return f"WITH drops AS ({held}) "


def held_parameters(held: dict[int, Counts]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {"days": [], "reasons": [], "agents": [], "events": []}
    for day, counts in held.items():
        for (reason, agent), count in counts.items():
            columns["days"].append(day_to_date(day))
            columns["reasons"].append(reason)
            columns["agents"].append(agent or None)
            columns["events"].append(count)
    return columns


async def report(
    engine: QueryEngine,
    drops: DropLog | None,
    site_id: str,
    start: dt.datetime,
    end: dt.datetime,
    bots: int,
) -> dict[str, Any]:
    """Drops of ``site_id`` per reason and UTC day over ``[start, end)``, and the top bots."""
    first, last = utc_days(start, end)
    held = drops.held(site_id, first, last) if drops else {}
    superseded = {drops.path(site_id, day) for day in held} if drops else set()
    files = files_to_read(engine.layout, site_id, first, last, superseded)
    parameters: dict[str, Any] = held_parameters(held)
    if files:
        parameters["files"] = files
    cte = drops_sql(bool(files))
    _, by_day = await engine.fetch(
        cte + "SELECT day, reason, sum(events)::BIGINT FROM drops GROUP BY ALL ORDER BY ALL",
        parameters,
    )
    _, top_bots = await engine.fetch(
        cte + "SELECT user_agent, sum(events)::BIGINT AS total FROM drops WHERE reason = 'bot' "
        "GROUP BY user_agent ORDER BY total DESC, user_agent LIMIT $limit",
        {**parameters, "limit": bots},
    )
    return {
        "site_id": site_id,
        "date_range": [day_to_date(first).isoformat(), day_to_date(last).isoformat()],
        **report_result(by_day, top_bots),
    }


def report_result(
    by_day: list[tuple[dt.date, str, int]], top_bots: list[tuple[str | None, int]]
) -> dict[str, Any]:
    """Totals per reason, one entry per day that dropped anything, and the top bots."""
    reasons = dict.fromkeys(REASONS, 0)
    days: dict[dt.date, dict[str, int]] = {}
    for day, reason, events in by_day:
        reasons[reason] = reasons.get(reason, 0) + events
        days.setdefault(day, dict.fromkeys(REASONS, 0))[reason] = events
    return {
        "total": sum(reasons.values()),
        "reasons": reasons,
        "days": [{"date": day.isoformat(), **counts} for day, counts in sorted(days.items())],
        "bots": [{"user_agent": agent or "", "events": events} for agent, events in top_bots],
    }
