"""One SQL builder for every stats question: a :class:`Query` in, DuckDB SQL out.

The SQL reads a relation named ``source`` (the engine prepares it: the site's
Parquet files for the range plus accepted events not yet flushed) and builds:

``events``
    the site's events in ``[start, end)``.
``numbered``
    each event with its visit number: a visitor's new visit starts when more
    than 30 minutes passed since their previous event, or at UTC midnight.
``visits``
    one row per visit: start, end, events, pageviews, entry and exit page
    (first and last pageview), revenue and the attributes of its first event
    (source, UTM, device, browser, OS, country).
``rows``
    every event with its visit's attributes, so one filter tree can test event
    and visit dimensions alike.

Filters select rows. Event metrics (visitors, pageviews, events, revenue)
aggregate the selected rows; visit metrics (visits, bounce rate, duration,
views per visit) aggregate the visits that contain at least one selected row.
A filter on a visit dimension therefore keeps whole visits, a filter on an
event dimension keeps the visits in which such an event happened.

Rebuilding visits takes window functions over every event of the range, the
slowest part of a dashboard. Compaction therefore also writes each finished
day's visits (:func:`rollup_sql`), and queries that need nothing but visits and
plain event scans (:func:`reads_rollup`) read those instead, building visits
from events only for the days without a rollup. Both paths give the same
numbers, which the tests check.

Unique visitors are a distinct count, the other slow part. Without filters,
visitors per page or event name (:func:`reads_pairs`) and visitors in total,
per visit dimension or per day, week or month at UTC+0 (:func:`reads_seen`)
come from per-day data that says when each (value, visitor) pair was last
seen before (:mod:`mallard.storage.pairs`): a pair counts at its first
occurrence in the range (or bucket), a filter instead of a distinct count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import pyarrow as pa

from mallard.query.model import (
    EVENT_DIMENSIONS,
    PROPS_PREFIX,
    TIME_DIMENSIONS,
    VISIT_DIMENSIONS,
    VISIT_METRICS,
    Combination,
    Condition,
    Filter,
    Query,
)
from mallard.query.zones import utc_offset_sql, utc_offsets
from mallard.storage.schema import (
    EVENT_SCHEMA,
    SEEN_BY,
    VISIT_ATTRIBUTES,
    VISIT_SCHEMA,
)

# Derived data a statement reads beside the events: visit rollups ("visits"), per-day
# pairs ("pairs"), per-day funnel steps ("steps", read by mallard.query.funnels), visit
# rollups with current ``seen_*`` columns ("seen"), or none.
Derived = Literal["visits", "pairs", "steps", "seen"] | None
VISIT_TIMEOUT = "INTERVAL 30 MINUTE"
UTC_DAY = "(epoch_us(timestamp) // 86400000000)"
NONE_LABEL = "(none)"
MICROS_PER_HOUR = 3_600_000_000
MICROS_PER_DAY = 86_400_000_000
MONDAY = 4  # 1970-01-05, the first Monday after the epoch, is day 4
SHIFT_DAYS = 7 * 52  # whole weeks, more than a range's local times can be before 1970
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


def column_for(dimension: str, params: Parameters, *, timezone: str) -> str:
    """The SQL expression an event or visit dimension groups and filters by, over ``rows``."""
    if dimension in EVENT_DIMENSIONS:
        return EVENT_DIMENSIONS[dimension]
    if dimension in VISIT_DIMENSIONS:
        return visit_column(VISIT_DIMENSIONS[dimension])
    key = dimension[len(PROPS_PREFIX) :]
    pointer = "/" + key.replace("~", "~0").replace("/", "~1")  # RFC 6901: any key at all
    return f"json_extract_string(props, {params.add(pointer)})"


def visit_column(name: str) -> str:
    """The column of ``visits`` holding the visit attribute ``name`` (an event column)."""
    return name if name in ("entry_page", "exit_page") else f"visit_{name}"


def time_bucket(dimension: str, query: Query, at: str) -> str:
    """The time bucket of column ``at`` in the query's timezone: a number, or for
    months the local TIMESTAMP the month starts at.

    Local time is epoch microseconds plus the zone's offset at that instant
    (:mod:`mallard.query.zones`), so hours, days and weeks are integer
    divisions: several times cheaper per row than converting timestamps.
    """
    unit = TIME_FORMATS[dimension][0]
    offset = utc_offset_sql(query.timezone, query.date_range.start, query.date_range.end, at)
    if unit == "month":
        return f"date_trunc('month', make_timestamp(epoch_us({at}) + {offset}))"
    # DuckDB's // rounds toward zero: local times before 1970 (a range from 1970-01-01
    # in a zone west of UTC) are first moved SHIFT_DAYS later, past zero
    local = f"(epoch_us({at}) + {offset} + {SHIFT_DAYS * MICROS_PER_DAY})"
    if unit == "hour":
        return f"({local} // {MICROS_PER_HOUR} - {SHIFT_DAYS * 24})"
    if unit == "day":
        return f"({local} // {MICROS_PER_DAY} - {SHIFT_DAYS})"
    return f"(({local} // {MICROS_PER_DAY} - {MONDAY}) // 7 - {SHIFT_DAYS // 7})"  # from Monday


def time_label(dimension: str, bucket: str) -> str:
    """SQL turning a :func:`time_bucket` value into its label, e.g. ``2026-01-31``."""
    unit, pattern = TIME_FORMATS[dimension]
    if unit == "hour":
        moment = f"make_timestamp({bucket} * {MICROS_PER_HOUR})"
    elif unit == "month":
        moment = bucket
    else:
        moment = f"make_timestamp({_first_day(unit, bucket)} * {MICROS_PER_DAY})"
    return f"strftime({moment}, '{pattern}')"


def _first_day(unit: str, bucket: str) -> str:
    """SQL: the day number (since the epoch) a day or week bucket starts on."""
    return bucket if unit == "day" else f"({bucket} * 7 + {MONDAY})"


def bucket_start(dimension: str, query: Query, bucket: str) -> str:
    """SQL for the instant a day, week or month :func:`time_bucket` value starts, in a
    zone whose offset is 0 over the range (:func:`whole_utc_days`)."""
    unit = TIME_FORMATS[dimension][0]
    if unit == "month":
        return f"to_timestamp(epoch({bucket}))"
    return f"to_timestamp({_first_day(unit, bucket)} * 86400)"


def whole_utc_days(query: Query, dimension: str) -> bool:
    """True when each bucket of the time ``dimension`` is whole UTC days (where visits
    and visitor ids end): days, weeks or months in a zone at UTC+0 over the range."""
    if TIME_FORMATS[concrete_dimension(query, dimension)][0] == "hour":
        return False
    pieces = utc_offsets(query.timezone, query.date_range.start, query.date_range.end)
    return all(offset == 0 for _, offset in pieces)


def file_list(paths: list[str]) -> str:
    """A DuckDB list literal of file paths, for ``read_parquet``."""
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _sql_type(kind: pa.DataType) -> str:
    """DuckDB's name of an event column's type."""
    if pa.types.is_decimal(kind):
        return f"DECIMAL({kind.precision}, {kind.scale})"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ"
    return {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER"}[kind]


EVENT_SQL_TYPES = {column.name: _sql_type(column.type) for column in EVENT_SCHEMA}


def events_select(schema: pa.Schema) -> str:
    """The select list reading a file of ``schema`` (another tool's) as ``EVENT_SCHEMA``'s
    columns, each cast (see :func:`mallard.storage.schema.converts`): a timestamp
    without zone taken as UTC, columns it lacks as nulls, its own columns left out.
    ``site_id`` comes from the partition when the file has none (``hive_partitioning``).
    An unsigned 64-bit ``visitor_id`` is read bit for bit (2**64 - 1 as -1), so ids stay
    distinct; a ``screen_width`` beyond 32 bits reads as unknown (null)."""
    columns = []
    for column in EVENT_SCHEMA:
        name = f'"{column.name}"'
        kind = schema.field(column.name).type if column.name in schema.names else None
        cast = "TRY_CAST" if column.name == "screen_width" else "CAST"
        if kind is None:
            value = name if column.name == "site_id" else "NULL"
        elif pa.types.is_timestamp(kind) and kind.tz is None:
            value = f"timezone('UTC', {name}::TIMESTAMP)"
        elif pa.types.is_uint64(kind) and column.name == "visitor_id":
            value = f"CASE WHEN {name} > {2**63 - 1} THEN {name}::HUGEINT - {2**64} ELSE {name} END"
        else:
            value = name
        columns.append(f"{cast}({value} AS {EVENT_SQL_TYPES[column.name]}) AS {name}")
    return ", ".join(columns)


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
    base = condition.operator.removesuffix("_not")
    negate = condition.operator.endswith("_not")
    if base == "matches":  # RE2's own option: lower-casing a pattern changes it (\D, \S)
        options = "" if condition.case_sensitive else ", 'i'"
        tests = [f"regexp_matches({value}, {params.add(v)}{options})" for v in values]
        test = "(" + " OR ".join(tests) + ")"
    else:
        parameter = params.add
        if not condition.case_sensitive:  # both sides by DuckDB's lower(), not Python's
            value = f"lower({value})"

            def parameter(text: str) -> str:
                return f"lower({params.add(text)})"

        if base == "is":
            test = f"{value} IN ({', '.join(parameter(v) for v in values)})"
        elif len(values) == 1:
            test = f"contains({value}, {parameter(values[0])})"
        else:
            test = _contains_any(value, values, parameter)
    return f"(NOT {test})" if negate else test


RE2_METACHARACTERS = re.compile(r"[\\.+*?()|\[\]{}^$]")
# RE2 matches in one pass while its automaton fits its memory: patterns of 12,000
# characters of random paths do, 16,000 fall back to a matcher 10x slower (and
# 700,000 do not compile).
PATTERN_CHARACTERS = 10_000


def _contains_any(value: str, texts: list[str], parameter: Callable[[str], str]) -> str:
    """SQL: ``value`` contains one of ``texts`` (each passed by ``parameter``).

    The texts, escaped, become RE2 alternations, which scan a row once for any
    number of them (an OR of ``contains()`` scans it once per text), each small
    enough for RE2 to compile.
    """
    tests: list[str] = []
    groups: list[list[str]] = []
    size = PATTERN_CHARACTERS
    for text in texts:
        literal = RE2_METACHARACTERS.sub(lambda match: "\\" + match[0], text)
        if len(literal) >= PATTERN_CHARACTERS:
            tests.append(f"contains({value}, {parameter(text)})")
            continue
        if size + len(literal) >= PATTERN_CHARACTERS:
            groups.append([])
            size = 0
        groups[-1].append(literal)
        size += len(literal) + 1
    tests += [f"regexp_matches({value}, {parameter('|'.join(group))})" for group in groups]
    return "(" + " OR ".join(tests) + ")"


def visit_ctes(events: str, visits: str) -> str:
    """``marked``, ``numbered`` and ``<visits>`` CTEs over the events relation ``events``.

    This is the one definition of a visit, used by queries and by the rollup
    that compaction writes: a visitor's events with at most 30 minutes between
    consecutive ones, within one UTC day (where daily files, rollups and
    visitor ids are cut).
    """
    attributes = ",\n        ".join(
        f"arg_min_null({column}, timestamp) AS visit_{column}" for column in VISIT_ATTRIBUTES
    )
    return f"""marked AS (
        SELECT *, CASE WHEN lag(timestamp) OVER visitor >= timestamp - {VISIT_TIMEOUT}
                        AND lag({UTC_DAY}) OVER visitor = {UTC_DAY} THEN 0 ELSE 1 END AS opens_visit
        FROM {events} WINDOW visitor AS (PARTITION BY visitor_id ORDER BY timestamp)
    ),
    numbered AS (
        SELECT * EXCLUDE (opens_visit),
               sum(opens_visit) OVER (PARTITION BY visitor_id ORDER BY timestamp
                                      ROWS UNBOUNDED PRECEDING) AS visit_no
        FROM marked
    ),
    {visits} AS (
        SELECT visitor_id, visit_no,
        min(timestamp) AS visit_start,
        max(timestamp) AS visit_end,
        count(*) AS visit_events,
        count(*) FILTER (WHERE event_name = 'pageview') AS visit_pageviews,
        arg_min(pathname, timestamp) FILTER (WHERE event_name = 'pageview') AS entry_page,
        arg_max(pathname, timestamp) FILTER (WHERE event_name = 'pageview') AS exit_page,
        {attributes},
        sum(revenue_amount) AS visit_revenue,
        count(revenue_amount) AS visit_revenue_events
        FROM numbered GROUP BY visitor_id, visit_no
    )"""


def rollup_sql(events: str) -> str:
    """The visits of the events relation ``events``, in ``VISIT_SCHEMA``'s columns
    (the ``seen_*`` columns null: see :func:`seen_visits_sql`)."""
    nulls = ", ".join(
        ["NULL::TIMESTAMPTZ AS seen_visitor"]
        + [f"NULL::BIGINT AS seen_gap_{name}" for name in SEEN_BY]
    )
    return f"""WITH {visit_ctes(events, "visits")}
    SELECT {", ".join(VISIT_SCHEMA.names)} FROM (SELECT *, {nulls} FROM visits)
    ORDER BY visitor_id, visit_start"""


def seen_visits_sql(visits: str, earlier: str | None) -> str:
    """The relation ``visits`` (whole UTC days, ``VISIT_SCHEMA``) with its ``seen_*`` columns.

    ``seen_visitor`` holds when the visitor's previous visit started (in
    ``visits``, or in the relation ``earlier``: the visit rollups of every
    earlier day), and ``seen_gap_<dimension>`` how long before that their
    previous visit with the same value of that dimension started (mostly 0:
    the same visit, which compresses well).
    """
    labels = ", ".join(f"{labelled(visit_column(name))} AS {name}" for name in SEEN_BY)
    previous = "max(earlier.visit_start)"
    seen = ", ".join(
        [f"{previous} AS seen_visitor"]
        + [
            f"epoch_us({previous}) - epoch_us({previous} FILTER "
            f"(WHERE earlier.{name} = visit.{name})) AS seen_gap_{name}"
            for name in SEEN_BY
        ]
    )
    history = "SELECT * FROM labels"
    if earlier:  # only the visitors of these days
        history += f""" UNION ALL SELECT visitor_id, visit_start, {labels}
        FROM {earlier} SEMI JOIN day_visits USING (visitor_id)"""
    columns = ", ".join(
        f"seen.{name}" if name.startswith("seen_") else f"visits.{name}"
        for name in VISIT_SCHEMA.names
    )
    return f"""WITH day_visits AS (SELECT * FROM {visits}),
    labels AS (SELECT visitor_id, visit_start, {labels} FROM day_visits),
    history AS ({history}),
    seen AS (
        SELECT visit.visitor_id, visit.visit_start, {seen}
        FROM labels AS visit JOIN history AS earlier
          ON earlier.visitor_id = visit.visitor_id AND earlier.visit_start < visit.visit_start
        GROUP BY visit.visitor_id, visit.visit_start
    )
    SELECT {columns} FROM day_visits AS visits LEFT JOIN seen
      ON seen.visitor_id = visits.visitor_id AND seen.visit_start = visits.visit_start
    ORDER BY visits.visitor_id, visits.visit_start"""


# Dimensions answered from per-day pairs (mallard.storage.pairs), by pair kind.
PAIR_KINDS = {"event:page": "page", "event:name": "name", "event:goal": "name"}
PAIR_METRICS = {"visitors", "pageviews", "events", "total_revenue", "average_revenue"}
PAIR_TOTALS = """count(*) AS events, sum(revenue_amount) AS revenue,
               count(revenue_amount) AS revenue_events"""


def day_numbers_sql(events: str, earlier: str | None) -> str:
    """Each visitor of the events relation ``events`` (one UTC day) with their number in
    the site and their first event's time: the number the steps relation ``earlier``
    (the steps of earlier days) gives them, or else the next free one, in the order of
    their first event of the day."""
    firsts = f"SELECT visitor_id, min(timestamp) AS first_seen FROM {events} GROUP BY visitor_id"
    if earlier is None:
        return f"""SELECT visitor_id, first_seen,
        row_number() OVER (ORDER BY first_seen, visitor_id) AS visitor_number FROM ({firsts})"""
    return f"""WITH day_visitors AS ({firsts}),
    numbered AS (SELECT visitor_id, visitor_number FROM {earlier} WHERE kind = 'visitor'),
    known AS (
        SELECT visitor_id, min(visitor_number) AS known
        FROM numbered SEMI JOIN day_visitors USING (visitor_id) GROUP BY visitor_id
    ),
    taken AS (SELECT coalesce(max(visitor_number), 0) AS taken FROM numbered)
    SELECT visitor_id, first_seen, coalesce(known, taken + row_number() OVER (
        ORDER BY known IS NOT NULL, first_seen, visitor_id)) AS visitor_number
    FROM day_visitors LEFT JOIN known USING (visitor_id) CROSS JOIN taken"""


def day_pairs_sql(events: str, earlier: str | None) -> str:
    """Each (page, visitor) pair among the pageviews of the events relation ``events``
    (one UTC day) and each (event name, visitor) pair among its events, in
    ``PAIR_SCHEMA``'s columns: with ``previously_seen``, the latest ``last_seen``
    of the same pair in the relation ``earlier`` (the pairs of earlier days).
    """
    pairs = " UNION ALL ".join(
        f"""SELECT '{kind}' AS kind, {labelled(EVENT_DIMENSIONS[dimension])} AS value, visitor_id,
               {PAIR_TOTALS}, max(timestamp) AS last_seen
        FROM {events}{where} GROUP BY value, visitor_id"""
        for kind, dimension, where in (
            ("page", "event:page", " WHERE event_name = 'pageview'"),
            ("name", "event:name", ""),
        )
    )
    if earlier is None:
        return f"SELECT *, NULL::TIMESTAMPTZ AS previously_seen FROM ({pairs}) ORDER BY ALL"
    return f"""WITH day_pairs AS ({pairs}),
    seen AS (
        SELECT kind, value, visitor_id, max(last_seen) AS previously_seen
        FROM {earlier} SEMI JOIN day_pairs USING (kind, value, visitor_id)
        GROUP BY kind, value, visitor_id
    )
    SELECT * FROM day_pairs LEFT JOIN seen USING (kind, value, visitor_id)
    ORDER BY kind, value, visitor_id"""


def day_steps_sql(events: str, numbers: str) -> str:
    """The rows of ``STEP_SCHEMA`` for the events relation ``events`` (one UTC day), its
    visitors numbered by the relation ``numbers`` (:func:`day_numbers_sql`), sorted."""
    return f"""SELECT kind, value, NULL::BIGINT AS visitor_id, visitor_number, timestamp FROM (
        SELECT CASE WHEN event_name = 'pageview' THEN 'page' ELSE 'name' END AS kind,
               CASE WHEN event_name = 'pageview' THEN pathname ELSE event_name END AS value,
               visitor_id, timestamp
        FROM {events}
    ) JOIN {numbers} USING (visitor_id)
    UNION ALL
    SELECT 'visitor', NULL, visitor_id, visitor_number, first_seen FROM {numbers}
    ORDER BY kind, value, visitor_id, visitor_number, timestamp"""


# per visit, what a visit metric adds up
VISIT_SUMS = {
    "visits": "1",
    "visit_pageviews": "visit_pageviews",
    "bounces": "(visit_events = 1 AND visit_pageviews = 1)::INTEGER",
    "duration_us": "epoch_us(visit_end) - epoch_us(visit_start)",
    "pageviews": "visit_pageviews",
    "events": "visit_events",
    "total_revenue": "visit_revenue",
    "revenue_events": "visit_revenue_events",
}


def reads_pairs(query: Query) -> bool:
    """True for visitors (and counts) per page or event name over all events of the range:
    answered from the per-day pairs of the days that have them."""
    return (
        len(query.dimensions) == 1
        and query.dimensions[0] in PAIR_KINDS
        and not query.filters
        and set(query.metrics) <= PAIR_METRICS
    )


SEEN_METRICS = {*PAIR_METRICS, *VISIT_METRICS, "percentage"}


def reads_seen(query: Query) -> bool:
    """True for visitors over all visits of the range, in total, per visit dimension or
    per day, week or month at UTC+0 (visit metrics beside them): answered from the
    visit rollups' ``seen_*`` columns."""
    if query.filters or not set(query.metrics) <= SEEN_METRICS:
        return False
    if not {"visitors", "percentage"} & set(query.metrics):
        return False  # nothing distinct to count: plain visit rollups are as fast
    if not query.dimensions:
        return True
    if len(query.dimensions) > 1:
        return False
    [dimension] = query.dimensions
    if dimension in TIME_DIMENSIONS:  # a visit lies in one bucket, and counts where it starts
        return "percentage" not in query.metrics and whole_utc_days(query, dimension)
    return dimension in VISIT_DIMENSIONS


def _first_seen_ctes(
    name: str, rolled: str, fresh: str, sums: list[str], *, grouped: bool, shared: bool = False
) -> str:
    """The CTE ``name``: visitors and the ``sums`` per ``d0`` (or in total, unless
    ``grouped``), each (``d0``, visitor) pair counted once, where it first occurs.

    ``rolled`` selects the rows of the rolled days: ``d0``, ``visitor_id``,
    ``first`` (true where the pair was not seen since the range started) and
    the sums' columns. ``fresh`` selects the pairs of every other day: ``d0``,
    ``visitor_id`` and the sums. A pair counts once whether it occurs on the
    fresh days, the rolled days or both (also when a rolled row's "seen
    before" is a visit that started before the range but ran into it, so is
    fresh too): in the fresh pairs, or else at its first rolled row.
    ``shared``: later CTEs read the rolled rows too, which are then read once
    and kept.

    With ``sums``, every rolled row is added up where it is, and only whether
    its pair is fresh too is looked up (4-10 % off a dashboard's ten queries
    over 30 days, against carrying every row through a join). Without, only
    the rolled rows where a pair is first take part: one join pairs each fresh
    pair with its first rolled row, if any (10-20 % off a visitors breakdown
    by device, browser or country).
    """
    totals = "".join(f", sum({column}) AS {column}" for column in sums)
    if sums:
        counted = f"""SELECT d0, sum(visitors)::BIGINT AS visitors{totals} FROM (
            SELECT d0, count(*) FILTER (WHERE first AND NOT EXISTS (
                       SELECT 1 FROM {name}_fresh AS f
                       WHERE f.d0 = r.d0 AND f.visitor_id = r.visitor_id
                   )) AS visitors{totals}
            FROM {name}_rolled AS r GROUP BY d0
            UNION ALL
            SELECT d0, count(*) AS visitors{totals} FROM {name}_fresh GROUP BY d0
        ) GROUP BY d0"""
    else:
        counted = f"""SELECT coalesce(r.d0, f.d0) AS d0, count(*) AS visitors
        FROM (SELECT * FROM {name}_rolled WHERE first) AS r
        FULL JOIN {name}_fresh AS f USING (d0, visitor_id) GROUP BY 1"""
    total = f"SELECT sum(visitors) AS visitors{totals} FROM {name}_counted"
    return f"""{name}_fresh AS ({fresh}),
    {name}_rolled AS {"MATERIALIZED " if shared else ""}({rolled}),
    {name}_counted AS ({counted}),
    {name} AS ({f"SELECT * FROM {name}_counted" if grouped else total})"""


def _first_in_range(seen: str, start: str) -> str:
    """True where ``seen`` (the same pair's previous occurrence) is before the range
    starting at ``start``, or before ``pair_span.seen_since`` (deleted since), or null."""
    return f"({seen} IS NULL OR {seen} < greatest({start}, seen_since))"


def _pair_stats_ctes(query: Query, params: Parameters) -> str:
    """``event_stats`` from the pairs of the range's rolled days and the other days' events.

    The engine binds ``rolled_pairs`` (the pairs of consecutive whole days of
    the range whose ``previously_seen`` is current for the range),
    ``pair_span.seen_since`` (the oldest day with events when the pairs were
    built: earlier ones were deleted) and ``fresh_source`` (the events of every
    other day). A pair counts once: on the rolled day where it was not seen
    since the range's start, or in the events of the other days.
    """
    dimension = query.dimensions[0]
    kind = PAIR_KINDS[dimension]
    start = params.add(query.date_range.start)
    pageviews = "events" if kind == "page" else "CASE WHEN value = 'pageview' THEN events END"
    first = _first_in_range("previously_seen", start)
    rolled = f"""SELECT value AS d0, visitor_id, {first} AS first, events,
               {pageviews} AS pageviews, revenue AS total_revenue, revenue_events
        FROM rolled_pairs, pair_span WHERE kind = '{kind}'"""
    fresh = f"""SELECT {labelled(column_for(dimension, params, timezone=query.timezone))} AS d0,
               visitor_id, count(*) AS events,
               count(*) FILTER (WHERE event_name = 'pageview') AS pageviews,
               sum(revenue_amount) AS total_revenue, count(revenue_amount) AS revenue_events
        FROM fresh_events{" WHERE event_name = 'pageview'" if kind == "page" else ""}
        GROUP BY d0, visitor_id"""
    sums = ["events", "pageviews", "total_revenue", "revenue_events"]
    return f"""WITH {events_cte(query, params, "fresh_events", "fresh_source")},
    {_first_seen_ctes("event_stats", rolled, fresh, sums, grouped=True)}"""


SUMS_NEEDED = {
    "visits": ("visits",), "views_per_visit": ("visits", "visit_pageviews"),
    "bounce_rate": ("visits", "bounces"), "visit_duration": ("visits", "duration_us"),
    "pageviews": ("pageviews",), "events": ("events",), "total_revenue": ("total_revenue",),
    "average_revenue": ("total_revenue", "revenue_events"),
}  # fmt: skip


def _seen_stats_ctes(query: Query, params: Parameters) -> str:
    """``event_stats`` (and ``grand_total``) from the visit rollups' ``seen_*`` columns.

    The engine binds ``rolled_visits`` (the visits of consecutive whole days
    of the range whose ``seen_*`` columns are current for the range),
    ``fresh_rollups`` (the visits of the range's other days with a rollup),
    ``pair_span`` and ``fresh_source`` as for the pairs (see
    :func:`_pair_stats_ctes`). A visitor counts for a dimension value at their
    first visit in the range with that value: a visit whose previous one with
    that value (``seen_visitor`` minus ``seen_gap_<dimension>``) started before
    the range; per time bucket, at their first visit in the bucket.
    """
    start = params.add(query.date_range.start)
    needed = {s for m in query.metrics for s in SUMS_NEEDED.get(m, ())}
    sums = [column for column in VISIT_SUMS if column in needed]
    dimension = query.dimensions[0] if query.dimensions else None
    if dimension is None:
        d0, seen = "''", "seen_visitor"
    elif dimension in TIME_DIMENSIONS:
        dimension = concrete_dimension(query, dimension)
        d0, seen = time_bucket(dimension, query, "visit_start"), "seen_visitor"
        start = f"greatest({start}, {bucket_start(dimension, query, d0)})"
    else:
        d0 = labelled(column_for(dimension, params, timezone=query.timezone))
        seen = f"seen_visitor - to_microseconds(seen_gap_{VISIT_DIMENSIONS[dimension]})"
    percentage = "percentage" in query.metrics
    rolled = f"""SELECT {d0} AS d0, visitor_id, {_first_in_range(seen, start)} AS first
               {"".join(f", {VISIT_SUMS[c]} AS {c}" for c in sums)}
               {f", {_first_in_range('seen_visitor', start)} AS first_visit" if percentage else ""}
        FROM rolled_visits, pair_span"""
    fresh = f"""SELECT {d0} AS d0, visitor_id
               {"".join(f", sum({VISIT_SUMS[c]}) AS {c}" for c in sums)}
        FROM fresh_visits GROUP BY d0, visitor_id"""
    ctes = [
        f"WITH {events_cte(query, params, 'fresh_events', 'fresh_source')}",
        visit_ctes("fresh_events", "built_visits"),
        """fresh_visits AS (
        SELECT * FROM built_visits UNION ALL BY NAME SELECT * FROM fresh_rollups
    )""",
        _first_seen_ctes(
            "event_stats", rolled, fresh, sums, grouped=dimension is not None, shared=percentage
        ),
    ]
    if percentage:  # all visitors: the same rows, by visitor
        ctes += [
            _first_seen_ctes(
                "all_visits",
                "SELECT '' AS d0, visitor_id, first_visit AS first FROM event_stats_rolled",
                "SELECT DISTINCT '' AS d0, visitor_id FROM event_stats_fresh",
                [],
                grouped=False,
            ),
            "grand_total AS (SELECT visitors AS all_visitors FROM all_visits)",
        ]
    return ",\n    ".join(ctes)


def events_cte(
    query: Query, params: Parameters, name: str = "events", relation: str = "source"
) -> str:
    site = params.add(query.site_id)
    start = params.add(query.date_range.start)
    end = params.add(query.date_range.end)
    return (
        f"{name} AS (SELECT * FROM {relation} WHERE site_id = {site} "
        f"AND timestamp >= {start} AND timestamp < {end})"
    )


def base_ctes(query: Query, params: Parameters, *, sessions: bool) -> str:
    """``events``, and with ``sessions`` also ``numbered``, ``visits`` and ``rows``."""
    if not sessions:
        return f"WITH {events_cte(query, params)}, rows AS (SELECT * FROM events)"
    return f"""WITH {events_cte(query, params)},
    {visit_ctes("events", "visits")},
    rows AS (
        SELECT numbered.*, visits.* EXCLUDE (visitor_id, visit_no)
        FROM numbered JOIN visits USING (visitor_id, visit_no)
    )"""


def rollup_ctes(query: Query, params: Parameters) -> str:
    """``events`` and ``visits``, reading the rollup for the days the engine has one.

    The engine binds ``rolled_visits`` (the visits of the range's rolled-up
    days, each day wholly inside the range) and ``fresh_source`` (the events of
    every other day), whose visits are built here.
    """
    start = params.add(query.date_range.start)
    end = params.add(query.date_range.end)
    return f"""WITH {events_cte(query, params)},
    {events_cte(query, params, "fresh_events", "fresh_source")},
    {visit_ctes("fresh_events", "fresh_visits")},
    visits AS (
        SELECT * FROM rolled_visits WHERE visit_start >= {start} AND visit_start < {end}
        UNION ALL BY NAME
        SELECT * FROM fresh_visits
    )"""


def needs_sessions(query: Query) -> bool:
    if any(metric in VISIT_METRICS for metric in query.metrics):
        return True
    if any(d in VISIT_DIMENSIONS for d in query.dimensions):
        return True
    return any(_mentions_visit_dimension(item) for item in query.filters)


def _dimensions_of(item: Filter) -> list[str]:
    if isinstance(item, Combination):
        return [d for child in item.children for d in _dimensions_of(child)]
    return [item.dimension]


def _mentions_visit_dimension(item: Filter) -> bool:
    return any(d in VISIT_DIMENSIONS for d in _dimensions_of(item))


def reads_rollup(query: Query) -> bool:
    """True when the query can be answered from visits alone (plus plain event scans).

    That holds when every filter tests a visit dimension (so it keeps or drops
    whole visits) and every dimension is a visit dimension or time. Event
    metrics then come from the selected visits' totals, which equal the totals
    of their events (every event of the range is in exactly one visit of the
    range), except per time bucket, where a visit counts where it starts: by
    time, event metrics come from an event scan, which is only possible when
    nothing is visit-scoped.
    """
    if not needs_sessions(query) or "conversion_rate" in query.metrics:
        return False
    if not filters_only_visits(query):
        return False
    if any(d not in VISIT_DIMENSIONS and d not in TIME_DIMENSIONS for d in query.dimensions):
        return False
    return not (
        _visit_scoped(query)
        and any(d in TIME_DIMENSIONS for d in query.dimensions)
        and any(m not in VISIT_METRICS for m in query.metrics)
    )


def filters_only_visits(query: Query) -> bool:
    """True when every filter tests a visit dimension: it keeps or drops whole visits."""
    return all(d in VISIT_DIMENSIONS for item in query.filters for d in _dimensions_of(item))


def _visit_scoped(query: Query) -> bool:
    return bool(query.filters) or any(d in VISIT_DIMENSIONS for d in query.dimensions)


def _without_goal_conditions(filters: tuple[Filter, ...]) -> tuple[Filter, ...]:
    return tuple(
        item
        for item in filters
        if not (isinstance(item, Condition) and item.dimension in ("event:goal", "event:name"))
    )


def where_sql(filters: tuple[Filter, ...], params: Parameters, timezone: str) -> str:
    if not filters:
        return "TRUE"
    return " AND ".join(filter_sql(item, params, timezone) for item in filters)


class Statement(NamedTuple):
    """SQL for the engine, and the derived data it reads beside the events
    (see :data:`Derived`)."""

    sql: str
    parameters: dict[str, Any]
    derived: Derived = None


def _group_columns(
    query: Query, dimensions: list[str], names: list[str], params: Parameters, at: str
) -> str:
    """``<expression> AS d0, ...`` for the dimensions, time bucketed by column ``at``."""
    expressions = [
        time_bucket(d, query, at)
        if d in TIME_FORMATS
        else labelled(column_for(d, params, timezone=query.timezone))
        for d in dimensions
    ]
    return "".join(f"{e} AS {n}, " for e, n in zip(expressions, names, strict=True))


def _stats_ctes(
    query: Query, dimensions: list[str], names: list[str], params: Parameters
) -> StatsCtes:
    """``event_stats``, ``visit_stats`` (when visits are needed and not in
    ``event_stats``) and ``grand_total`` (for ``percentage``).

    Filters select rows. Event metrics aggregate the selected rows; visit
    metrics aggregate the visits that contain at least one selected row.
    """
    tz = query.timezone
    where = where_sql(query.filters, params, tz)
    group_by = ", ".join(names) or "()"
    if "event:page" in dimensions:  # pages are what pageviews were of
        where = f"({where}) AND event_name = 'pageview'"
    rollup = reads_rollup(query)
    by_time = any(d in TIME_FORMATS for d in dimensions)
    if rollup and (_visit_scoped(query) or not by_time):  # everything from the selected visits
        dims = _group_columns(query, dimensions, names, params, "visit_start")
        aggregates = _event_totals(query, VISIT_TOTALS)
        if wants_visit_stats(query):  # the same groups: one pass
            aggregates += f", {VISIT_AGGREGATES}"
        return StatsCtes(
            f"""{rollup_ctes(query, params)},
    selected AS (SELECT * FROM visits WHERE {where}),
    {_event_stats(query, dims, aggregates, names)}""",
            separate_visit_stats=False,
        )
    if rollup:
        ctes = f"{rollup_ctes(query, params)}, rows AS (SELECT * FROM events)"
    else:
        ctes = base_ctes(query, params, sessions=needs_sessions(query))
    dims = _group_columns(query, dimensions, names, params, "timestamp")
    ctes += f""",
    selected AS (SELECT * FROM rows WHERE {where}),
    {_event_stats(query, dims, _event_totals(query, EVENT_TOTALS), names)}"""
    if not wants_visit_stats(query):
        return StatsCtes(ctes, separate_visit_stats=False)
    # a visit falls in the time bucket where it started
    visit_dims = _group_columns(query, dimensions, names, params, "visit_start")
    if rollup:  # by time, nothing visit-scoped: every visit of the range matches
        return StatsCtes(ctes + _visit_stats(visit_dims, "visits", group_by))
    group_names = "".join(f"{n}, " for n in names)
    return StatsCtes(
        ctes
        + f""",
    matched_visits AS (
        SELECT {group_names}visits.* EXCLUDE (visitor_id, visit_no) FROM visits JOIN (
            SELECT DISTINCT {visit_dims}visitor_id, visit_no FROM selected
        ) USING (visitor_id, visit_no)
    ){_visit_stats(group_names, "matched_visits", group_by)}"""
    )


# what each event metric needs, aggregated over selected events or over selected visits
EVENT_TOTALS = {
    "visitors": "count(DISTINCT visitor_id) AS visitors",
    "pageviews": "count(*) FILTER (WHERE event_name = 'pageview') AS pageviews",
    "events": "count(*) AS events",
    "revenue": "sum(revenue_amount) AS total_revenue, count(revenue_amount) AS revenue_events",
}
VISIT_TOTALS = {
    "visitors": "count(DISTINCT visitor_id) AS visitors",
    "pageviews": "sum(visit_pageviews) AS pageviews",
    "events": "sum(visit_events) AS events",
    "revenue": "sum(visit_revenue) AS total_revenue, sum(visit_revenue_events) AS revenue_events",
}
NEEDS = {
    "visitors": "visitors", "percentage": "visitors", "conversion_rate": "visitors",
    "pageviews": "pageviews", "events": "events",
    "total_revenue": "revenue", "average_revenue": "revenue",
}  # fmt: skip


def _event_totals(query: Query, totals: dict[str, str]) -> str:
    """Only the aggregates the query's metrics use: each one costs a pass over the rows."""
    needed = {NEEDS[m] for m in query.metrics if m in NEEDS} or {"events"}
    return ", ".join(sql for name, sql in totals.items() if name in needed)


def _event_stats(query: Query, dims: str, aggregates: str, names: list[str]) -> str:
    """``event_stats``: ``aggregates`` of ``selected`` per group, and for
    ``percentage`` (which needs a dimension) also ``grand_total``, the visitors
    of all groups together, taken in the same pass (a grouping set for the total)."""
    group_by = ", ".join(names) or "()"
    if "percentage" not in query.metrics:
        return f"event_stats AS (SELECT {dims}{aggregates} FROM selected GROUP BY {group_by})"
    return f"""stats_and_total AS (
        SELECT {dims}{aggregates}, GROUPING({group_by}) AS total_row
        FROM selected GROUP BY GROUPING SETS (({group_by}), ())
    ),
    event_stats AS (SELECT * EXCLUDE (total_row) FROM stats_and_total WHERE total_row = 0),
    grand_total AS (SELECT visitors AS all_visitors FROM stats_and_total WHERE total_row <> 0)"""


def wants_visit_stats(query: Query) -> bool:
    return any(metric in VISIT_METRICS for metric in query.metrics)


VISIT_AGGREGATES = ", ".join(
    f"sum({VISIT_SUMS[column]}) AS {column}"
    for column in ("visits", "visit_pageviews", "bounces", "duration_us")
)


def _visit_stats(dims: str, visits: str, group_by: str) -> str:
    """The ``visit_stats`` CTE: visit metrics of the relation ``visits`` per group."""
    return f""",
    visit_stats AS (SELECT {dims}{VISIT_AGGREGATES} FROM {visits} GROUP BY {group_by})"""


class StatsCtes(NamedTuple):
    """What :func:`_stats_ctes` built; ``separate_visit_stats``: join ``visit_stats``."""

    sql: str
    separate_visit_stats: bool = True


def aggregate_sql(query: Query) -> Statement:
    """SQL answering ``query``: one row per dimension group, dimensions then metrics.

    Ordering and pagination are applied, and the last column is the total
    number of groups (for ``include.total_rows``).
    """
    params = Parameters()
    tz = query.timezone
    dimensions = [concrete_dimension(query, d) for d in query.dimensions]
    names = [f"d{i}" for i in range(len(dimensions))]
    derived = derived_data(query)
    if derived == "pairs":
        stats = StatsCtes(_pair_stats_ctes(query, params), separate_visit_stats=False)
    elif derived == "seen":
        stats = StatsCtes(_seen_stats_ctes(query, params), separate_visit_stats=False)
    else:
        stats = _stats_ctes(query, dimensions, names, params)
    ctes = [stats.sql]
    join_sql = ""
    if stats.separate_visit_stats:
        using = f"USING ({', '.join(names)})" if names else "ON TRUE"
        join_sql += f" FULL JOIN visit_stats {using}"
    if "conversion_rate" in query.metrics:
        goal_free = where_sql(_without_goal_conditions(query.filters), params, tz)
        if "event:page" in dimensions:
            goal_free = f"({goal_free}) AND event_name = 'pageview'"
        kept = [
            (n, d) for n, d in zip(names, dimensions, strict=True)
            if d not in ("event:goal", "event:name")
        ]  # fmt: skip
        base_dims = _group_columns(
            query, [d for _, d in kept], [n for n, _ in kept], params, "timestamp"
        )
        goal_names = ", ".join(n for n, _ in kept)
        ctes.append(
            f"""goal_base AS (
        SELECT {base_dims}count(DISTINCT visitor_id) AS base_visitors
        FROM rows WHERE {goal_free} GROUP BY {goal_names or "()"}
    )"""
        )
        join_sql += f" LEFT JOIN goal_base {f'USING ({goal_names})' if goal_names else 'ON TRUE'}"
    if "percentage" in query.metrics:
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
    columns = [
        f"{time_label(d, n)} AS {n}" if d in TIME_FORMATS else n
        for d, n in zip(dimensions, names, strict=True)
    ] + [f"{metric_sql[m]} AS m_{m}" for m in query.metrics]
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
    return Statement(sql, params.values, derived)


def revenue_currencies_sql(query: Query) -> Statement:
    """The currencies (at most 10) of the revenue events on the range's days that the
    query's event filters keep. Neither its visit filters (they would need visits rebuilt
    from events) nor its times within the first and last day (reading every event's time
    would triple the cost) narrow them."""
    params = Parameters()
    filters = tuple(item for item in query.filters if not _mentions_visit_dimension(item))
    where = where_sql(filters, params, query.timezone)
    sql = (
        f"SELECT DISTINCT revenue_currency FROM source WHERE revenue_amount IS NOT NULL "
        f"AND {where} ORDER BY 1 LIMIT 10"
    )
    return Statement(sql, params.values)


def derived_data(query: Query) -> Derived:
    """Which derived data answers ``query`` (with the events of the days without it)."""
    if reads_pairs(query):
        return "pairs"
    if reads_seen(query):
        return "seen"
    return "visits" if reads_rollup(query) else None


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
