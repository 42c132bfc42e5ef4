"""Answering a :class:`Query` in the shape of Plausible's Stats API v2."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

from mallard.query.engine import QueryEngine
from mallard.query.model import MAX_LIMIT, Query, QueryError, days_range, previous_period
from mallard.query.sql import (
    TIME_FORMATS,
    aggregate_sql,
    concrete_dimension,
    revenue_currencies_sql,
)

Row = dict[str, Any]


def _json_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


async def _rows(engine: QueryEngine, query: Query) -> tuple[list[Row], int]:
    statement = aggregate_sql(query)
    _, records = await engine.fetch(
        statement.sql,
        statement.parameters,
        derived=statement.derived,
        site_id=query.site_id,
        start=query.date_range.start,
        end=query.date_range.end,
    )
    dims = len(query.dimensions)
    rows = [
        {
            "dimensions": list(record[:dims]),
            "metrics": [_json_number(v) for v in record[dims : dims + len(query.metrics)]],
        }
        for record in records
    ]
    total = records[0][-1] if records else 0
    return rows, total


MAX_TIME_BUCKETS = 10_000  # a time dimension's buckets in a range, every one answered

# about how many buckets of each unit a range of N days holds, at most
_BUCKETS_IN_DAYS = {
    "hour": lambda days: days * 24 + 1,
    "day": lambda days: days,
    "week": lambda days: days // 7 + 2,
    "month": lambda days: days // 28 + 1,
}


def _check_time_buckets(query: Query) -> None:
    """A QueryError when the time dimension would cut the range into too many buckets."""
    dimension = query.time_dimension
    if dimension is None:
        return
    unit = TIME_FORMATS[concrete_dimension(query, dimension)][0]
    days = (query.date_range.last_day - query.date_range.first_day).days + 1
    buckets = _BUCKETS_IN_DAYS[unit](days)
    if buckets > MAX_TIME_BUCKETS:
        raise QueryError(
            f"{dimension} cuts this date_range into about {buckets:,} {unit}s, more than "
            f"{MAX_TIME_BUCKETS:,}: ask for a coarser time dimension or a shorter range"
        )


def time_labels(query: Query) -> list[str]:
    """Every bucket of the query's time dimension in its range, oldest first."""
    dimension = query.time_dimension
    if dimension is None:
        return []
    unit, pattern = TIME_FORMATS[concrete_dimension(query, dimension)]
    zone = zoneinfo.ZoneInfo(query.timezone)
    first = query.date_range.start.astimezone(zone).replace(tzinfo=None)
    last = (query.date_range.end - dt.timedelta(microseconds=1)).astimezone(zone)
    last = last.replace(tzinfo=None)
    labels: list[str] = []
    moment = _truncate(first, unit)
    while moment <= last:
        labels.append(moment.strftime(pattern))
        moment = _next(moment, unit)
    return labels


def _truncate(moment: dt.datetime, unit: str) -> dt.datetime:
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "week":
        return day - dt.timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    return day


def _next(moment: dt.datetime, unit: str) -> dt.datetime:
    if unit == "hour":
        return moment + dt.timedelta(hours=1)
    if unit == "day":
        return moment + dt.timedelta(days=1)
    if unit == "week":
        return moment + dt.timedelta(days=7)
    month = moment.month % 12 + 1
    return moment.replace(year=moment.year + (moment.month == 12), month=month)


def _gap_filled(query: Query) -> bool:
    """True when the answer has one row per time bucket: the time dimension alone."""
    return query.time_dimension is not None and query.dimensions == (query.time_dimension,)


def fill_time_gaps(query: Query, rows: list[Row]) -> list[Row]:
    """With the time dimension alone, one row per bucket, zeros where nothing happened."""
    if not _gap_filled(query):
        return rows
    by_label = {row["dimensions"][0]: row for row in rows}
    zeros = [0] * len(query.metrics)
    return [
        by_label.get(label, {"dimensions": [label], "metrics": list(zeros)})
        for label in time_labels(query)
    ]


def _ordered_page(query: Query, rows: list[Row]) -> list[Row]:
    """``rows`` in the query's order (oldest bucket first by default), then its page."""
    for name, direction in reversed(query.order_by):  # stable sorts, last key first
        part, index = (
            ("dimensions", query.dimensions.index(name))
            if name in query.dimensions
            else ("metrics", query.metrics.index(name))
        )
        rows = sorted(
            rows,
            key=lambda row, part=part, index=index: (
                row[part][index] is not None,
                row[part][index] or 0,
            ),
            reverse=direction == "desc",
        )
    return rows[query.offset : query.offset + query.limit]


def _change(metric: str, now: Any, before: Any) -> Any:
    if metric == "bounce_rate":
        return (now or 0) - (before or 0)
    if not before:
        return None if now else 0
    return round(100 * ((now or 0) - before) / before)


def from_first_event(engine: QueryEngine, query: Query) -> Query:
    """``date_range: "all"`` starts on the site's first day, not at the epoch."""
    if query.raw.get("date_range") != "all":
        return query
    first = engine.first_day(query.site_id)
    if first is None or first <= query.date_range.first_day:
        return query
    if query.timezone != "UTC":  # the first UTC day may begin on the local day before
        first -= dt.timedelta(days=1)
    first = min(first, query.date_range.last_day)
    return query.with_range(days_range(first, query.date_range.last_day, query.timezone))


async def run_query(engine: QueryEngine, query: Query) -> dict[str, Any]:
    """The whole answer: ``results``, ``meta`` and the normalised ``query``."""
    query = from_first_event(engine, query)
    _check_time_buckets(query)
    every_bucket = _gap_filled(query)  # ordered and paged here, after the gaps are filled
    meta: dict[str, Any] = {}
    rows, total = await _rows(engine, _whole(query) if every_bucket else query)
    if any(metric in REVENUE_METRICS for metric in query.metrics):
        await _name_currencies(engine, query, meta)
    rows = fill_time_gaps(query, rows)
    if query.total_rows and not rows and query.offset:  # past the last page
        total = (await _rows(engine, replace(query, limit=1, offset=0)))[1]
    if query.comparison:
        earlier = query.with_range(
            previous_period(query.date_range, query.comparison, query.timezone)
        )
        earlier_rows = fill_time_gaps(earlier, (await _rows(engine, _whole(earlier)))[0])
        _attach_comparison(query, rows, earlier, earlier_rows)
        meta["comparison_date_range"] = _range_json(earlier)
    if every_bucket:
        total = len(rows)
        rows = _ordered_page(query, rows)
    if query.time_labels:
        meta["time_labels"] = time_labels(query)
    if query.total_rows:
        meta["total_rows"] = max(total, len(rows))
    return {"results": rows, "meta": meta, "query": _query_json(query)}


REVENUE_METRICS = ("total_revenue", "average_revenue")


async def _name_currencies(engine: QueryEngine, query: Query, meta: dict[str, Any]) -> None:
    """List the revenue's currencies in ``meta`` (null: amounts sent without one), with
    a warning when there are several: their amounts are added as they are (there are
    no exchange rates)."""
    statement = revenue_currencies_sql(query)
    _, records = await engine.fetch(
        statement.sql,
        statement.parameters,
        site_id=query.site_id,
        start=query.date_range.start,
        end=query.date_range.end,
    )
    currencies = [currency for (currency,) in records]
    meta["revenue_currencies"] = currencies
    if len(currencies) > 1:
        codes = ", ".join(currency for currency in currencies if currency is not None)
        named = f"in {codes} and without a currency" if None in currencies else f"in {codes}"
        meta["metric_warnings"] = {
            metric: {
                "code": "several_currencies",
                "warning": f"amounts {named} are added as they are, without exchange rates",
            }
            for metric in query.metrics
            if metric in REVENUE_METRICS
        }


def _whole(query: Query) -> Query:
    """The query's first rows, as many as a page may hold, from the first."""
    return replace(query, limit=MAX_LIMIT, offset=0)


def _comparison_key(query: Query) -> Callable[[Row], tuple[Any, ...]]:
    """A row's dimensions, its time bucket counted from the start of the query's range."""
    position = query.dimensions.index(query.time_dimension) if query.time_dimension else None
    buckets = {label: k for k, label in enumerate(time_labels(query))}

    def key(row: Row) -> tuple[Any, ...]:
        labels = list(row["dimensions"])
        if position is not None:
            labels[position] = buckets.get(labels[position])
        return tuple(labels)

    return key


def _attach_comparison(query: Query, rows: list[Row], earlier: Query, before: list[Row]) -> None:
    """Each row's comparison: the earlier period's row with the same dimensions, its time
    bucket as far into the earlier period as the row's into the query's."""
    earlier_key = _comparison_key(earlier)
    by_key = {earlier_key(row): row for row in before}
    key = _comparison_key(query)
    for row in rows:
        before_row = by_key.get(key(row))
        before_metrics = before_row["metrics"] if before_row else [0] * len(query.metrics)
        row["comparison"] = {
            "dimensions": before_row["dimensions"] if before_row else row["dimensions"],
            "metrics": before_metrics,
            "change": [
                _change(metric, now, then)
                for metric, now, then in zip(
                    query.metrics, row["metrics"], before_metrics, strict=True
                )
            ],
        }


def _range_json(query: Query) -> list[str]:
    zone = zoneinfo.ZoneInfo(query.timezone)
    return [
        query.date_range.start.astimezone(zone).isoformat(),
        query.date_range.end.astimezone(zone).isoformat(),
    ]


def _query_json(query: Query) -> dict[str, Any]:
    return {
        "site_id": query.site_id,
        "metrics": list(query.metrics),
        "date_range": _range_json(query),
        "timezone": query.timezone,
        "dimensions": list(query.dimensions),
        "filters": query.raw.get("filters", []),
        "order_by": [list(item) for item in query.order_by],
        "pagination": {"limit": query.limit, "offset": query.offset},
        "include": query.raw.get("include", {}),
    }
