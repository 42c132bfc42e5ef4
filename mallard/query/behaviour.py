"""Behavioural reports: retention cohorts, page flow, visit distributions.

Each builder returns SQL over the same ``events``/``visits`` CTEs as every
other query (:func:`mallard.query.sql.base_ctes`, or ``rollup_ctes`` where
visits are enough), with the query's filters.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from mallard.query.model import Query, QueryError
from mallard.query.sql import (
    MICROS_PER_DAY,
    MONDAY,
    Parameters,
    Statement,
    base_ctes,
    filters_only_visits,
    needs_sessions,
    rollup_ctes,
    time_bucket,
    where_sql,
)
from mallard.storage.layout import day_number

RETENTION_PERIODS = {"day": "day", "week": "week", "month": "month"}
MASK_PERIODS = 127  # a HUGEINT's bits below its sign (a BIGINT's 63 when they are enough)
DURATION_BUCKETS = ((0, 10), (10, 30), (30, 60), (60, 180), (180, 600), (600, 1800), (1800, None))


def retention_sql(query: Query, period: str) -> Statement:
    """Cohorts by the period of each visitor's first event in the range.

    For each cohort and offset k: visitors of the cohort active in period
    cohort + k. Periods follow the query's time zone; weeks start on Monday.
    Periods are numbered (days or weeks since the epoch, months since year 0)
    so offsets are differences of integers.

    Unless a filter tests events, activity is read from visits (the rollups
    where compaction wrote them): a visit lies within one UTC day, so its
    events fall in the period of its start or of its end, both of which it
    was active in. A range of at most ``MASK_PERIODS`` periods marks each
    visitor's active periods as bits of one number, so the cohorts are a count
    per distinct pattern of bits; longer ones count distinct (visitor, period).
    """
    if period not in RETENTION_PERIODS:
        raise QueryError(f"interval must be day, week or month, not {period!r}")
    params = Parameters()
    rollup = filters_only_visits(query)
    if rollup:
        slots = [_slot(query, period, "visit_start"), _slot(query, period, "visit_end")]
        ctes = rollup_ctes(query, params)
    else:
        slots = [_slot(query, period, "timestamp")]
        ctes = base_ctes(query, params, sessions=needs_sessions(query))
    where = where_sql(query.filters, params, query.timezone)
    activity = f"FROM {'visits' if rollup else 'rows'} WHERE {where}"
    first = _period_number(period, query.date_range.first_day)
    periods = _period_number(period, query.date_range.last_day) - first + 1
    if periods <= MASK_PERIODS:
        cells = _cells_by_mask(slots, activity, first, periods)
    else:
        cells = _cells_by_distinct(slots, activity)
    sql = (
        ctes
        + f""",
    {cells}
SELECT {_period_start(period, "cohort")} AS cohort,
       sum(visitors) FILTER (WHERE offset_periods = 0) OVER (PARTITION BY cohort) AS size,
       offset_periods, visitors, max(cohort + offset_periods) OVER () - cohort AS span
FROM cells ORDER BY cohort, offset_periods"""
    )
    return Statement(sql, params.values, "visits" if rollup else None)


def _cells_by_mask(slots: list[str], activity: str, first: int, periods: int) -> str:
    """``cells`` from a number per visitor whose bit k says they were active in period
    ``first`` + k: one pass over the activity, then a count per distinct number."""
    width = "BIGINT" if periods <= 63 else "HUGEINT"
    bits = " | ".join(f"(1::{width} << ({slot} - {first}))" for slot in slots)
    return f"""masks AS (
        SELECT mask, count(*) AS visitors
        FROM (SELECT bit_or({bits}) AS mask {activity} GROUP BY visitor_id) GROUP BY mask
    ),
    active AS (
        SELECT mask, visitors, bit
        FROM (SELECT *, unnest(range({periods})) AS bit FROM masks) WHERE (mask >> bit) & 1 = 1
    ),
    cells AS (
        SELECT {first} + first_bit AS cohort, bit - first_bit AS offset_periods,
               sum(visitors) AS visitors
        FROM (SELECT *, min(bit) OVER (PARTITION BY mask) AS first_bit FROM active) GROUP BY ALL
    ),"""


def _cells_by_distinct(slots: list[str], activity: str) -> str:
    """``cells`` from every distinct (visitor, period) joined with the visitor's first."""
    slot = slots[0]
    if len(slots) == 2:  # start and end of a visit
        first, last = slots
        slot = f"unnest(CASE WHEN {last} = {first} THEN [{first}] ELSE [{first}, {last}] END)"
    return f"""active AS (SELECT DISTINCT visitor_id, {slot} AS slot {activity}),
    cohorts AS (SELECT visitor_id, min(slot) AS cohort FROM active GROUP BY visitor_id),
    cells AS (
        SELECT cohort, slot - cohort AS offset_periods, count(*) AS visitors
        FROM active JOIN cohorts USING (visitor_id) GROUP BY ALL
    ),"""


def _period_number(period: str, day: dt.date) -> int:
    """The number of the period (as :func:`_slot` numbers them) that local ``day`` is in."""
    if period == "month":
        return day.year * 12 + day.month - 1
    days = day_number(day)
    return days if period == "day" else (days - MONDAY) // 7


def _slot(query: Query, period: str, at: str) -> str:
    """The number of the period that column ``at`` falls in."""
    slot = time_bucket(f"time:{period}", query, at)
    return f"(year({slot}) * 12 + month({slot}) - 1)" if period == "month" else slot


def _period_start(period: str, number: str) -> str:
    """The first day (a DATE) of the numbered period."""
    if period == "month":
        return f"make_date(({number} // 12)::INT, ({number} % 12 + 1)::INT, 1)"
    days = number if period == "day" else f"({number} * 7 + {MONDAY})"
    return f"make_timestamp({days} * {MICROS_PER_DAY})::DATE"


def retention_result(rows: list[tuple[Any, ...]]) -> list[dict]:
    """Per cohort, every period up to the latest one in the data, zeros included."""
    counts: dict[Any, dict[int, int]] = {}
    sizes: dict[Any, tuple[int, int]] = {}
    for cohort, size, offset, visitors, span in rows:
        counts.setdefault(cohort, {})[offset] = visitors
        sizes[cohort] = (size, span)
    return [
        {
            "cohort": cohort.isoformat(),
            "visitors": size,
            "periods": [
                {
                    "offset": offset,
                    "visitors": counts[cohort].get(offset, 0),
                    "percentage": percent(counts[cohort].get(offset, 0), size),
                }
                for offset in range(span + 1)
            ],
        }
        for cohort, (size, span) in sorted(sizes.items())
    ]


def percent(part: int, whole: int) -> float:
    """``part / whole * 100`` rounded half up to 2 decimals, as the SQL metrics are."""
    if not whole:
        return 0.0
    exact = Decimal(100 * part) / Decimal(whole)
    return float(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def flow_sql(query: Query, page: str, limit: int) -> tuple[str, dict[str, Any]]:
    """The pages viewed right before and right after ``page`` within the same visit."""
    params = Parameters()
    target = params.add(page)
    ctes = base_ctes(query, params, sessions=True)
    where = where_sql(query.filters, params, query.timezone)
    sql = (
        ctes
        + f""",
    views AS (
        SELECT pathname,
               lag(pathname) OVER visit AS previous_page,
               lead(pathname) OVER visit AS next_page
        FROM rows WHERE event_name = 'pageview' AND {where}
        WINDOW visit AS (PARTITION BY visitor_id, visit_no ORDER BY timestamp)
    ),
    here AS (SELECT * FROM views WHERE pathname = {target}),
    ranked AS (
        SELECT 'next' AS direction, coalesce(next_page, '(exit)') AS page, count(*) AS views
        FROM here GROUP BY ALL
        UNION ALL
        SELECT 'previous', coalesce(previous_page, '(entrance)'), count(*) FROM here GROUP BY ALL
    )
SELECT direction, page, views FROM (
    SELECT *, row_number() OVER (PARTITION BY direction ORDER BY views DESC, page) AS position
    FROM ranked
) WHERE position <= {params.add(limit)} ORDER BY direction, views DESC, page"""
    )
    return sql, params.values


def flow_result(page: str, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    result: dict[str, Any] = {"page": page, "previous": [], "next": []}
    for direction, other, views in rows:
        result[direction].append({"page": other, "views": views})
    return result


def sessions_sql(query: Query) -> tuple[str, dict[str, Any]]:
    """Visit totals and their distribution by pages per visit and by duration."""
    params = Parameters()
    buckets = " ".join(
        f"WHEN duration < {high} THEN '{_bucket_label(low, high)}'"
        for low, high in DURATION_BUCKETS
        if high is not None
    )
    ctes = base_ctes(query, params, sessions=True)
    where = where_sql(query.filters, params, query.timezone)
    sql = (
        ctes
        + f""",
    matched AS (
        SELECT DISTINCT visitor_id, visit_no FROM rows WHERE {where}
    ),
    chosen AS (
        SELECT v.*, epoch(visit_end - visit_start) AS duration
        FROM visits v JOIN matched USING (visitor_id, visit_no)
    )
SELECT 'pages' AS kind,
       CASE WHEN visit_pageviews >= 5 THEN '5+' ELSE visit_pageviews::VARCHAR END AS bucket,
       count(*) AS visits, avg(duration) AS mean_duration
FROM chosen GROUP BY ALL
UNION ALL
SELECT 'duration', CASE {buckets} ELSE '{_bucket_label(1800, None)}' END,
       count(*), avg(duration)
FROM chosen GROUP BY ALL"""
    )
    return sql, params.values


def _bucket_label(low: int, high: int | None) -> str:
    def text(seconds: int) -> str:
        return f"{seconds // 60}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds}s"

    return f"{text(low)}+" if high is None else f"{text(low)}-{text(high)}"


def sessions_result(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    order = ["0", "1", "2", "3", "4", "5+"] + [_bucket_label(lo, hi) for lo, hi in DURATION_BUCKETS]
    pages = sorted(
        ({"pages": b, "visits": v} for kind, b, v, _ in rows if kind == "pages"),
        key=lambda item: order.index(item["pages"]),
    )
    durations = sorted(
        ({"duration": b, "visits": v} for kind, b, v, _ in rows if kind == "duration"),
        key=lambda item: order.index(item["duration"]),
    )
    return {"pages_per_visit": pages, "visit_duration_buckets": durations}
