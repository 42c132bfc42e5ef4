"""Retention: whole days older than ``retention_days`` are deleted, everywhere.

A day is one partition folder per site under ``events/``, its visit rollup
under ``visits/``, its pairs under ``pairs/`` and its drop counts under
``dropped/``; all go together, the events last, under the site's maintenance
and exclusive locks so that a query sees the day entirely or not at all. A day
that has only drop counts (a site that only bots visited) goes too.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from dataclasses import dataclass

from mallard.storage.layout import DataLayout
from mallard.storage.locks import maintenance_lock, site_lock

log = logging.getLogger("mallard.retention")


@dataclass
class RetentionReport:
    days: int = 0
    seconds: float = 0.0


def expire(layout: DataLayout, keep_days: int, today: dt.date | None = None) -> RetentionReport:
    """Delete every site's days before ``today - keep_days + 1`` (UTC). Blocking."""
    started = time.perf_counter()
    today = today or dt.datetime.now(dt.UTC).date()
    oldest_kept = today - dt.timedelta(days=keep_days - 1)
    report = RetentionReport()
    # events last: a day interrupted midway still has events, and goes next time
    areas = (layout.visits, layout.pairs, layout.steps, layout.dropped, layout.events)
    sites = sorted({site.name for area in areas for site in area.glob("site_id=*")})
    for site_folder in sites:  # a site may have drop counts (bots only) but no events
        site_id = site_folder.removeprefix("site_id=")
        old = sorted(
            {
                day.name
                for area in areas
                for day in (area / site_folder).glob("date=*")
                if (date := _day(day.name)) and date < oldest_kept
            }
        )
        if not old:
            continue
        with maintenance_lock(layout, site_id), site_lock(layout, site_id, exclusive=True):
            for day_folder in old:
                for area in areas:
                    shutil.rmtree(area / site_folder / day_folder, ignore_errors=True)
                report.days += 1
    report.seconds = time.perf_counter() - started
    if report.days:
        log.info(
            "retention: deleted %d site-days older than %s", report.days, oldest_kept,
            extra={"days": report.days, "oldest_kept": str(oldest_kept),
                   "duration_ms": report.seconds * 1000},
        )  # fmt: skip
    return report


def _day(name: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(name.removeprefix("date="))
    except ValueError:
        return None
