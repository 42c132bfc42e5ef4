"""One SQL builder for every stats question: a :class:`Query` in, DuckDB SQL out.

The SQL reads a relation named ``source`` (the engine prepares it: the site's
Parquet files for the range plus accepted events not yet flushed) and builds:

``events``
    the site's events in ``[start, end)``.
``numbered``
    each event with its visit number: a visitor's new visit starts when more
    than 30 minutes passed since their previous event.
``visits``
    one row per visit: start, end, events, pageviews, entry and exit page
    (first and last pageview) and the attributes of its first event (source,
    UTM, device, browser, OS, country).
``rows``
    every event with its visit's attributes, so one filter tree can test event
    and visit dimensions alike.

Filters select rows. Event metrics (visitors, pageviews, events, revenue)
aggregate the selected rows; visit metrics (visits, bounce rate, duration,
views per visit) aggregate the visits that contain at least one selected row.
A filter on a visit dimension therefore keeps whole visits, a filter on an
event dimension keeps the visits in which such an event happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mallard.query.model import (
    EVENT_DIMENSIONS,
    PROPS_PREFIX,
    VISIT_DIMENSIONS,
    VISIT_METRICS,
    Combination,
    Condition,
    Filter,
    Query,
)

VISIT_TIMEOUT = "INTERVAL 30 MINUTE"
NONE_LABEL = "(none)"
VISIT_ATTRIBUTES = (
    "referrer_source", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_content",
    "utm_term", "device_type", "browser", "browser_version", "os", "os_version", "country_code",
    "region", "city",
)  # fmt: skip
TIME_FORMATS = {
    "time:hour": ("hour", "%Y-%m-%d %H:00:00"),
    "time:day": ("day", "%Y-%m-%d"),
    "time:week": ("week", "%Y-%m-%d"),
    "time:month": ("month", "%Y-%m-01"),
}


def auto_time_dimension(query: Query) -> str:
    """What plain ``time`` means for this range: hours for a day, days up to a quarter."""
    days = (query.date_range.last_day - query.date_range.first_day).days + 1
    if days <= 1:
        return "time:hour"
    return "time:day" if days <= 92 else "time:month"


def concrete_dimension(query: Query, dimension: str) -> str:
    return auto_time_dimension(query) if dimension == "time" else dimension


@dataclass
class Parameters:
    """Collects bound values; ``add`` returns the placeholder to put in the SQL."""

    values: dict[str, Any] = field(default_factory=dict)

    def add(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"${name}"


def column_for(dimension: str, params: Parameters, *, timezone: str, at: str = "timestamp") -> str:
    """The SQL expression a dimension groups and filters by, over ``rows``."""
    if dimension in EVENT_DIMENSIONS:
        return EVENT_DIMENSIONS[dimension]
    if dimension in VISIT_DIMENSIONS:
        column = VISIT_DIMENSIONS[dimension]
        return column if column in ("entry_page", "exit_page") else f"visit_{column}"
    if dimension.startswith(PROPS_PREFIX):
        key = dimension[len(PROPS_PREFIX) :].replace('"', "")
        path = params.add('$."' + key + '"')
        return f"json_extract_string(props, {path})"
    unit, pattern = TIME_FORMATS[dimension]
    local = f"timezone({params.add(timezone)}, {at})"
    return f"strftime(date_trunc('{unit}', {local}), '{pattern}')"


def labelled(expression: str) -> str:
    return f"coalesce(CAST({expression} AS VARCHAR), '{NONE_LABEL}')"


def filter_sql(item: Filter, params: Parameters, timezone: str) -> str:
    if isinstance(item, Combination):
        parts = [filter_sql(child, params, timezone) for child in item.children]
        if item.operator == "not":
            return f"(NOT {parts[0]})"
        return "(" + f" {item.operator.upper()} ".join(parts) + ")"
    return _condition_sql(item, params, timezone)


def _condition_sql(condition: Condition, params: Parameters, timezone: str) -> str:
    value = labelled(column_for(condition.dimension, params, timezone=timezone))
    values = list(condition.values)
    if not condition.case_sensitive:
        value = f"lower({value})"
        values = [v.lower() for v in values]
    base = condition.operator.removesuffix("_not")
    negate = condition.operator.endswith("_not")
    if base == "is":
        test = f"{value} IN ({', '.join(params.add(v) for v in values)})"
    elif base == "contains":
        test = "(" + " OR ".join(f"contains({value}, {params.add(v)})" for v in values) + ")"
    else:  # matches
        test = "(" + " OR ".join(f"regexp_matches({value}, {params.add(v)})" for v in values) + ")"
    return f"(NOT {test})" if negate else test


def base_ctes(query: Query, params: Parameters, *, sessions: bool) -> str:
    """``events``, and with ``sessions`` also ``numbered``, ``visits`` and ``rows``."""
    site = params.add(query.site_id)
    start = params.add(query.date_range.start)
    end = params.add(query.date_range.end)
    events = (
        f"events AS (SELECT * FROM source WHERE site_id = {site} "
        f"AND timestamp >= {start} AND timestamp < {end})"
    )
    if not sessions:
        return f"WITH {events}, rows AS (SELECT * FROM events)"
    attributes = ",\n        ".join(
        f"arg_min_null({column}, timestamp) AS visit_{column}" for column in VISIT_ATTRIBUTES
    )
    return f"""WITH {events},
    marked AS (
        SELECT *, CASE WHEN lag(timestamp) OVER (PARTITION BY visitor_id ORDER BY timestamp)
                            >= timestamp - {VISIT_TIMEOUT} THEN 0 ELSE 1 END AS opens_visit
        FROM events
    ),
    numbered AS (
        SELECT * EXCLUDE (opens_visit),
               sum(opens_visit) OVER (PARTITION BY visitor_id ORDER BY timestamp
                                      ROWS UNBOUNDED PRECEDING) AS visit_no
        FROM marked
    ),
    visits AS (
        SELECT visitor_id, visit_no,
        min(timestamp) AS visit_start,
        max(timestamp) AS visit_end,
        count(*) AS visit_events,
        count(*) FILTER (WHERE event_name = 'pageview') AS visit_pageviews,
        arg_min(pathname, timestamp) FILTER (WHERE event_name = 'pageview') AS entry_page,
        arg_max(pathname, timestamp) FILTER (WHERE event_name = 'pageview') AS exit_page,
        {attributes}
        FROM numbered GROUP BY visitor_id, visit_no
    ),
    rows AS (
        SELECT numbered.*, visits.* EXCLUDE (visitor_id, visit_no)
        FROM numbered JOIN visits USING (visitor_id, visit_no)
    )"""


def needs_sessions(query: Query) -> bool:
    if any(metric in VISIT_METRICS for metric in query.metrics):
        return True
    if any(d in VISIT_DIMENSIONS for d in query.dimensions):
        return True
    return any(_mentions_visit_dimension(item) for item in query.filters)


def _mentions_visit_dimension(item: Filter) -> bool:
    if isinstance(item, Combination):
        return any(_mentions_visit_dimension(child) for child in item.children)
    return item.dimension in VISIT_DIMENSIONS


def _without_goal_conditions(filters: tuple[Filter, ...]) -> tuple[Filter, ...]:
    return tuple(
        item
        for item in filters
        if not (isinstance(item, Condition) and item.dimension in ("event:goal", "event:name"))
    )


def _where(filters: tuple[Filter, ...], params: Parameters, timezone: str) -> str:
    if not filters:
        return "TRUE"
    return " AND ".join(filter_sql(item, params, timezone) for item in filters)


def aggregate_sql(query: Query) -> tuple[str, dict[str, Any]]:
    """SQL answering ``query``: one row per dimension group, dimensions then metrics.

    Ordering and pagination are applied, and the last column is the total
    number of groups (for ``include.total_rows``).
    """
    params = Parameters()
    sessions = needs_sessions(query)
    tz = query.timezone
    dimensions = [concrete_dimension(query, d) for d in query.dimensions]
    names = [f"d{i}" for i in range(len(dimensions))]
    event_dims = [labelled(column_for(d, params, timezone=tz)) for d in dimensions]
    ctes = [base_ctes(query, params, sessions=sessions)]
    where = _where(query.filters, params, tz)
    pages_only = "event:page" in dimensions  # pages are what pageviews were of
    if pages_only:
        where = f"({where}) AND event_name = 'pageview'"
    select_dims = ", ".join(f"{e} AS {n}" for e, n in zip(event_dims, names, strict=True))
    group_by = ", ".join(names) or "()"
    dims_prefix = (select_dims + ", ") if select_dims else ""

    ctes.append(
        f"""selected AS (SELECT * FROM rows WHERE {where}),
    event_stats AS (
        SELECT {dims_prefix}
               count(DISTINCT visitor_id) AS visitors,
               count(*) FILTER (WHERE event_name = 'pageview') AS pageviews,
               count(*) AS events,
               sum(revenue_amount) AS total_revenue,
               count(revenue_amount) AS revenue_events
        FROM selected GROUP BY {group_by}
    )"""
    )
    joins = []
    if sessions:
        visit_dims = [  # a visit falls in the time bucket where it started
            labelled(column_for(d, params, timezone=tz, at="visit_start"))
            if d in TIME_FORMATS
            else expression
            for d, expression in zip(dimensions, event_dims, strict=True)
        ]
        visit_select = ", ".join(f"{e} AS {n}" for e, n in zip(visit_dims, names, strict=True))
        visit_prefix = (visit_select + ", ") if visit_select else ""
        ctes.append(
            f"""matched_visits AS (
        SELECT DISTINCT {visit_prefix}visitor_id, visit_no FROM selected
    ),
    visit_stats AS (
        SELECT {"".join(n + ", " for n in names)}
               count(*) AS visits,
               sum(visit_pageviews) AS visit_pageviews,
               count(*) FILTER (WHERE visit_events = 1 AND visit_pageviews = 1) AS bounces,
               sum(epoch_us(visit_end) - epoch_us(visit_start)) AS duration_us
        FROM matched_visits JOIN visits USING (visitor_id, visit_no)
        GROUP BY {group_by}
    )"""
        )
        joins.append("visit_stats")
    if "conversion_rate" in query.metrics:
        goal_free = _where(_without_goal_conditions(query.filters), params, tz)
        if pages_only:
            goal_free = f"({goal_free}) AND event_name = 'pageview'"
        base_names = [
            n
            for n, d in zip(names, dimensions, strict=True)
            if d not in ("event:goal", "event:name")
        ]
        base_exprs = [
            f"{e} AS {n}"
            for n, e, d in zip(names, event_dims, dimensions, strict=True)
            if d not in ("event:goal", "event:name")
        ]
        base_select = "".join(expression + ", " for expression in base_exprs)
        ctes.append(
            f"""goal_base AS (
        SELECT {base_select}count(DISTINCT visitor_id) AS base_visitors
        FROM rows WHERE {goal_free} GROUP BY {", ".join(base_names) or "()"}
    )"""
        )
    ctes.append("grand_total AS (SELECT count(DISTINCT visitor_id) AS all_visitors FROM selected)")

    join_sql = ""
    for table in joins:
        using = f"USING ({', '.join(names)})" if names else "ON TRUE"
        join_sql += f" FULL JOIN {table} {using}"
    if "conversion_rate" in query.metrics:
        goal_names = [
            n
            for n, d in zip(names, dimensions, strict=True)
            if d not in ("event:goal", "event:name")
        ]
        using = f"USING ({', '.join(goal_names)})" if goal_names else "ON TRUE"
        join_sql += f" LEFT JOIN goal_base {using}"
    join_sql += " CROSS JOIN grand_total"

    metric_sql = {
        "visitors": "coalesce(visitors, 0)",
        "pageviews": "coalesce(pageviews, 0)",
        "events": "coalesce(events, 0)",
        "total_revenue": "coalesce(total_revenue, 0)",
        "average_revenue": ratio("(total_revenue * 100)::HUGEINT", "revenue_events * 100", 2),
        "visits": "coalesce(visits, 0)",
        "views_per_visit": ratio("visit_pageviews", "visits", 2),
        "bounce_rate": ratio("100 * bounces", "visits", 0),
        "visit_duration": ratio("duration_us", "visits * 1000000", 0),
        "percentage": ratio("100 * coalesce(visitors, 0)", "all_visitors", 2),
        "conversion_rate": ratio("100 * coalesce(visitors, 0)", "base_visitors", 2),
    }
    columns = names + [f"{metric_sql[m]} AS m_{m}" for m in query.metrics]
    order = _order_sql(query, names, dimensions)
    limit = params.add(query.limit)
    offset = params.add(query.offset)
    sql = (
        ",\n    ".join(ctes)
        + f"\nSELECT {', '.join(columns)}, count(*) OVER () AS total_rows\n"
        + f"FROM event_stats{join_sql}\n"
        + ("" if names else "WHERE TRUE\n")
        + f"ORDER BY {order}\nLIMIT {limit} OFFSET {offset}"
    )
    return sql, params.values


def ratio(numerator: str, denominator: str, places: int) -> str:
    """``numerator / denominator`` rounded half up to ``places``, in exact integer
    arithmetic (0 when the denominator is 0 or missing)."""
    scale = 10**places
    rounded = f"(2 * {scale} * ({numerator}) + ({denominator})) // (2 * ({denominator}))"
    value = rounded if places == 0 else f"({rounded}) / {scale}.0"
    return f"CASE WHEN ({denominator}) > 0 THEN {value} ELSE 0 END"


def _order_sql(query: Query, names: list[str], dimensions: list[str]) -> str:
    by_name = dict(zip(query.dimensions, names, strict=True))
    if query.order_by:
        terms = [
            f"{by_name[item] if item in by_name else 'm_' + item} {direction.upper()}"
            for item, direction in query.order_by
        ]
    elif any(d in TIME_FORMATS for d in dimensions):
        terms = [f"{n} ASC" for n, d in zip(names, dimensions, strict=True) if d in TIME_FORMATS]
    else:
        terms = [f"m_{query.metrics[0]} DESC"]
    terms += [f"{n} ASC" for n in names]
    return ", ".join(terms) or "1"
