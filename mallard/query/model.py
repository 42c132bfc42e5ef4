"""The query model: Plausible's Stats API v2 request, parsed and validated.

:func:`parse_query` turns the JSON body of ``POST /api/v2/query`` into a
:class:`Query`, or raises :class:`QueryError` with a message naming the bad
part. Everything downstream (SQL building, the dashboard's endpoints) works on
:class:`Query` objects only.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import json
import math
import re
import threading
import zoneinfo
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import duckdb

from mallard.ingest.validation import SITE_ID_PATTERN, SITE_ID_RULE

EVENT_METRICS = ("visitors", "pageviews", "events", "total_revenue", "average_revenue")
VISIT_METRICS = ("visits", "views_per_visit", "bounce_rate", "visit_duration")
DERIVED_METRICS = ("percentage", "conversion_rate")
METRICS = EVENT_METRICS + VISIT_METRICS + DERIVED_METRICS

# dimension -> column of the event (or of its visit) it groups by
EVENT_DIMENSIONS = {
    "event:page": "pathname",
    "event:hostname": "hostname",
    "event:name": "event_name",
    "event:goal": "event_name",
}
VISIT_DIMENSIONS = {
    "visit:entry_page": "entry_page",
    "visit:exit_page": "exit_page",
    "visit:source": "referrer_source",
    "visit:referrer": "referrer",
    "visit:utm_source": "utm_source",
    "visit:utm_medium": "utm_medium",
    "visit:utm_campaign": "utm_campaign",
    "visit:utm_content": "utm_content",
    "visit:utm_term": "utm_term",
    "visit:device": "device_type",
    "visit:browser": "browser",
    "visit:browser_version": "browser_version",
    "visit:os": "os",
    "visit:os_version": "os_version",
    "visit:country": "country_code",
    "visit:region": "region",
    "visit:city": "city",
}
TIME_DIMENSIONS = ("time", "time:hour", "time:day", "time:week", "time:month")
PROPS_PREFIX = "event:props:"
PROP_KEY = re.compile(r"[^\x00-\x1f\x7f]{1,256}")  # any key ingestion keeps, but not controls

FILTER_OPERATORS = ("is", "is_not", "contains", "contains_not", "matches", "matches_not")
DATE_PRESETS = ("day", "24h", "7d", "28d", "30d", "91d", "month", "6mo", "12mo", "year", "all")
MAX_LIMIT = 10_000
MAX_OFFSET = 1_000_000_000
MAX_FILTER_DEPTH = 8
MAX_FILTER_CONDITIONS = 200  # in all of a query's filters
NOT_ZONES = {"localtime", "posixrules", "Factory"}  # in the tz database, but no place's time
# Ranges lie within these days, so that their comparisons, time zones and
# buckets stay within what dates can hold.
FIRST_DAY = dt.date(1970, 1, 1)
LAST_DAY = dt.date(2099, 12, 31)  # zones' offsets are walked a year at a time (query.zones)
ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
ISO_MOMENT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}")  # then seconds, offset…


class QueryError(ValueError):
    """The query cannot be answered as asked; the message names the bad part."""


@dataclass(frozen=True)
class Condition:
    operator: str
    dimension: str
    values: tuple[str, ...]
    case_sensitive: bool = True


@dataclass(frozen=True)
class Combination:
    operator: Literal["and", "or", "not"]
    children: tuple[Filter, ...]


Filter = Condition | Combination


@dataclass(frozen=True)
class DateRange:
    """A resolved range: ``[start, end)`` in UTC, and the local dates it covers."""

    start: dt.datetime
    end: dt.datetime
    first_day: dt.date
    last_day: dt.date


@dataclass(frozen=True)
class Query:
    site_id: str
    metrics: tuple[str, ...]
    date_range: DateRange
    timezone: str = "UTC"
    dimensions: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    order_by: tuple[tuple[str, str], ...] = ()
    limit: int = MAX_LIMIT
    offset: int = 0
    time_labels: bool = False
    total_rows: bool = False
    comparison: str | None = None  # "previous_period" or "year_over_year"
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_range(self, date_range: DateRange) -> Query:
        return replace(self, date_range=date_range)

    @property
    def time_dimension(self) -> str | None:
        return next((d for d in self.dimensions if d in TIME_DIMENSIONS), None)


def dimension_exists(name: str) -> bool:
    if name in EVENT_DIMENSIONS or name in VISIT_DIMENSIONS or name in TIME_DIMENSIONS:
        return True
    return name.startswith(PROPS_PREFIX) and bool(PROP_KEY.fullmatch(name[len(PROPS_PREFIX) :]))


def validate_site_id(value: Any) -> str:
    if not isinstance(value, str) or not SITE_ID_PATTERN.fullmatch(value):
        raise QueryError(f"site_id must be a site id: {SITE_ID_RULE}")
    return value.lower()


def validate_timezone(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise QueryError("timezone must be an IANA time zone name such as Europe/Berlin")
    if value not in known_zones():
        raise QueryError(f"timezone {value!r} is not a known IANA time zone")
    if value in NOT_ZONES:
        raise QueryError(f"timezone {value!r} is a file of the zone database, not a time zone")
    return value


@functools.cache
def known_zones() -> frozenset[str]:
    """Zone names both Python's zone database and DuckDB's (ICU) know: a query's zone is
    used by both (``posix/…`` and ``right/…`` files are Python's alone)."""
    with duckdb.connect() as connection:
        rows = connection.execute("SELECT name FROM pg_timezone_names()").fetchall()
    icu = {name for (name,) in rows}
    return frozenset(zoneinfo.available_timezones() & icu)


def load_json(data: bytes | str, what: str) -> Any:
    """JSON text from a client, or a QueryError that says what is wrong with it."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogate (\ud800)
    except UnicodeError:
        raise QueryError(f"{what} must be UTF-8 text without lone surrogates") from None
    except RecursionError:
        raise QueryError(f"{what} nests too deeply") from None
    except ValueError as error:
        raise QueryError(f"{what} is not valid JSON: {error}") from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text} is too large")
    return number


def parse_query(body: Any, *, default_timezone: str = "UTC", today: dt.date | None = None) -> Query:
    """Validate a Stats API v2 request body."""
    if not isinstance(body, dict):
        raise QueryError("the query must be a JSON object")
    unknown = set(body) - {
        "site_id", "metrics", "date_range", "dimensions", "filters", "order_by",
        "pagination", "include", "timezone", "date",
    }  # fmt: skip
    if unknown:
        raise QueryError(f"unknown query field(s): {', '.join(sorted(unknown))}")
    site_id = validate_site_id(body.get("site_id"))
    timezone = validate_timezone(body.get("timezone", default_timezone))
    metrics = _metrics(body.get("metrics"))
    dimensions = _dimensions(body.get("dimensions", []))
    filters = _top_level(
        tuple(_filter(item, f"filters[{i}]") for i, item in enumerate(_list(body, "filters")))
    )
    if (conditions := _conditions(filters)) > MAX_FILTER_CONDITIONS:
        raise QueryError(
            f"filters hold {conditions} conditions, more than {MAX_FILTER_CONDITIONS}: "
            'give one condition several values instead, like ["is", "event:page", ["/a", "/b"]]'
        )
    anchor = parse_day(body["date"], "date") if "date" in body else None
    date_range = resolve_date_range(body.get("date_range"), timezone, today=today, anchor=anchor)
    order_by = _order_by(body.get("order_by", []), metrics, dimensions)
    limit, offset = _pagination(body.get("pagination", {}))
    include = body.get("include", {})
    if not isinstance(include, dict):
        raise QueryError("include must be an object")
    if unknown := set(include) - {"time_labels", "total_rows", "comparisons"}:
        raise QueryError(f"unknown include option(s): {', '.join(sorted(unknown))}")
    comparison = _comparison(include.get("comparisons"))
    if (
        "conversion_rate" in metrics
        and not _has_goal_filter(filters)
        and not any(d in ("event:goal", "event:name") for d in dimensions)
    ):
        raise QueryError("metric conversion_rate needs an event:goal filter or dimension")
    if "percentage" in metrics and not dimensions:
        raise QueryError("metric percentage needs at least one dimension")
    return Query(
        site_id=site_id,
        metrics=metrics,
        date_range=date_range,
        timezone=timezone,
        dimensions=dimensions,
        filters=filters,
        order_by=order_by,
        limit=limit,
        offset=offset,
        time_labels=_flag(include, "time_labels"),
        total_rows=_flag(include, "total_rows"),
        comparison=comparison,
        raw=body,
    )


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list):
        raise QueryError(f"{name} must be a list")
    return value


def _flag(include: dict[str, Any], name: str) -> bool:
    value = include.get(name, False)
    if not isinstance(value, bool):
        raise QueryError(f"include.{name} must be true or false")
    return value


def _metrics(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise QueryError('metrics must be a non-empty list, e.g. ["visitors"]')
    for metric in value:
        if metric not in METRICS:
            raise QueryError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if len(set(value)) != len(value):
        raise QueryError("metrics must not repeat")
    return tuple(value)


def _dimensions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise QueryError("dimensions must be a list")
    for dimension in value:
        if not isinstance(dimension, str) or not dimension_exists(dimension):
            raise QueryError(f"unknown dimension {dimension!r}")
    if sum(d in TIME_DIMENSIONS for d in value) > 1:
        raise QueryError("at most one time dimension")
    if len(set(value)) != len(value):
        raise QueryError("dimensions must not repeat")
    return tuple(value)


def _filter(value: Any, where: str, depth: int = 0) -> Filter:
    if depth > MAX_FILTER_DEPTH:
        raise QueryError(f"{where}: filters nest too deeply")
    if not isinstance(value, list) or not value:
        raise QueryError(f'{where} must be a list like ["is", "visit:country", ["DE"]]')
    operator = value[0]
    if operator in ("and", "or"):
        if len(value) != 2 or not isinstance(value[1], list) or not value[1]:
            raise QueryError(f"{where}: {operator} takes a non-empty list of filters")
        children = tuple(
            _filter(child, f"{where}[1][{i}]", depth + 1) for i, child in enumerate(value[1])
        )
        return Combination(operator, children)
    if operator == "not":
        if len(value) != 2:
            raise QueryError(f"{where}: not takes one filter")
        return Combination("not", (_filter(value[1], f"{where}[1]", depth + 1),))
    if operator not in FILTER_OPERATORS:
        raise QueryError(f"{where}: unknown filter operator {operator!r}")
    if len(value) not in (3, 4):
        raise QueryError(f"{where}: expected [operator, dimension, values]")
    dimension, values = value[1], value[2]
    if not isinstance(dimension, str) or not dimension_exists(dimension):
        raise QueryError(f"{where}: unknown dimension {dimension!r}")
    if dimension in TIME_DIMENSIONS:
        raise QueryError(f"{where}: filter on time with date_range instead")
    if not isinstance(values, list) or not values:
        raise QueryError(f"{where}: values must be a non-empty list")
    texts = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise QueryError(f"{where}: values must be strings or numbers")
        texts.append(str(item))
    if operator.startswith("matches"):
        for pattern in texts:
            _check_regex(pattern, where)
    case_sensitive = True
    if len(value) == 4:
        modifiers = value[3]
        if not isinstance(modifiers, dict) or set(modifiers) - {"case_sensitive"}:
            raise QueryError(f'{where}: modifiers may only be {{"case_sensitive": bool}}')
        case_sensitive = modifiers.get("case_sensitive", True)
        if not isinstance(case_sensitive, bool):
            raise QueryError(f"{where}: case_sensitive must be true or false")
    return Condition(operator, dimension, tuple(texts), case_sensitive)


_REGEX_ENGINE_LOCK = threading.Lock()


@functools.cache
def _regex_engine() -> duckdb.DuckDBPyConnection:
    """A DuckDB of its own: the queries' regular expressions are RE2's, not Python's."""
    return duckdb.connect()


def _check_regex(pattern: str, where: str) -> None:
    """A QueryError unless DuckDB, which runs the filter, accepts ``pattern``."""
    try:
        with _REGEX_ENGINE_LOCK:
            _regex_engine().execute("SELECT regexp_matches('', $1)", [pattern])
    except duckdb.Error as error:
        reason = str(error).splitlines()[0].removeprefix("Invalid Input Error: ")
        raise QueryError(f"{where}: invalid regular expression {pattern!r}: {reason}") from None


def _top_level(filters: tuple[Filter, ...]) -> tuple[Filter, ...]:
    """The filters with every ``and`` at the top level spread out (they all hold anyway),
    so that goal conditions inside one count as the query's goal filter."""
    spread: list[Filter] = []
    for item in filters:
        if isinstance(item, Combination) and item.operator == "and":
            spread.extend(_top_level(item.children))
        else:
            spread.append(item)
    return tuple(spread)


def _conditions(filters: tuple[Filter, ...]) -> int:
    return sum(
        _conditions(item.children) if isinstance(item, Combination) else 1 for item in filters
    )


def _has_goal_filter(filters: tuple[Filter, ...]) -> bool:
    return any(
        isinstance(item, Condition) and item.dimension in ("event:goal", "event:name")
        for item in filters
    )


def _order_by(
    value: Any, metrics: tuple[str, ...], dimensions: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise QueryError('order_by must be a list of [metric or dimension, "asc"|"desc"]')
    result = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or item[1] not in ("asc", "desc")
            or item[0] not in metrics + dimensions
        ):
            raise QueryError(
                f'order_by entry {item!r} must be [a queried metric or dimension, "asc"|"desc"]'
            )
        result.append((item[0], item[1]))
    return tuple(result)


def _pagination(value: Any) -> tuple[int, int]:
    if not isinstance(value, dict):
        raise QueryError("pagination must be an object with limit and offset")
    if unknown := set(value) - {"limit", "offset"}:
        raise QueryError(f"pagination has only limit and offset, not {', '.join(sorted(unknown))}")
    limit, offset = value.get("limit", MAX_LIMIT), value.get("offset", 0)
    for name, number, low, high in (
        ("limit", limit, 1, MAX_LIMIT),
        ("offset", offset, 0, MAX_OFFSET),
    ):
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
            raise QueryError(f"pagination.{name} must be a whole number from {low} to {high:,}")
    return limit, offset


def _comparison(value: Any) -> str | None:
    if value is None:
        return None
    mode = value.get("mode") if isinstance(value, dict) else None
    if mode not in ("previous_period", "year_over_year") or set(value) != {"mode"}:
        raise QueryError(
            'include.comparisons must be {"mode": "previous_period"} or {"mode": "year_over_year"}'
        )
    return mode


# --- dates ---


def _local_midnight_utc(day: dt.date, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)


def days_range(first_day: dt.date, last_day: dt.date, timezone: str) -> DateRange:
    """Whole local days ``first_day``..``last_day`` (inclusive) in ``timezone``."""
    zone = zoneinfo.ZoneInfo(timezone)
    return DateRange(
        start=_local_midnight_utc(first_day, zone),
        end=_local_midnight_utc(last_day + dt.timedelta(days=1), zone),
        first_day=first_day,
        last_day=last_day,
    )


def resolve_date_range(
    value: Any, timezone: str, *, today: dt.date | None = None, anchor: dt.date | None = None
) -> DateRange:
    """A preset (\"7d\" = the 7 days ending today, local time) or [start, end] dates.

    ``anchor`` (the query's ``date``) moves a preset back in time: it ends on
    that day instead of today ("all": everything up to it), and the calendar
    presets (month, 6mo, 12mo, year) then cover their months whole.
    """
    if isinstance(value, list):
        if anchor is not None:
            raise QueryError("date applies to a preset date_range like 7d or month, not to dates")
        return explicit_range(value, timezone)
    if value not in DATE_PRESETS:
        raise QueryError(
            f"date_range must be one of {', '.join(DATE_PRESETS)} or [start, end] dates"
        )
    if anchor is None:
        return _preset_range(
            value, timezone, today or dt.datetime.now(zoneinfo.ZoneInfo(timezone)).date()
        )
    if value == "24h":
        raise QueryError("date does not apply to date_range '24h' (the last 24 hours)")
    date_range = _preset_range(value, timezone, anchor, whole_months=True)
    _check_days(date_range.first_day, date_range.last_day)
    return date_range


def _preset_range(
    preset: str, timezone: str, today: dt.date, *, whole_months: bool = False
) -> DateRange:
    if preset == "24h":
        end = dt.datetime.now(dt.UTC)
        start = end - dt.timedelta(hours=24)
        return DateRange(start, end, start.astimezone(zoneinfo.ZoneInfo(timezone)).date(), today)
    if preset == "day":
        return days_range(today, today, timezone)
    if preset.endswith("d"):
        return days_range(today - dt.timedelta(days=int(preset[:-1]) - 1), today, timezone)
    if preset == "all":  # from_first_event moves the start to the site's first day
        return days_range(min(dt.date(2000, 1, 1), today), today, timezone)
    if preset == "year":
        last = today.replace(month=12, day=31) if whole_months else today
        return days_range(today.replace(month=1, day=1), last, timezone)
    last = _month_end(today) if whole_months else today
    if preset == "month":
        return days_range(today.replace(day=1), last, timezone)
    months = int(preset[:-2])  # 6mo, 12mo
    return days_range(_add_months(today.replace(day=1), -(months - 1)), last, timezone)


def _month_end(day: dt.date) -> dt.date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _add_months(day: dt.date, months: int) -> dt.date:
    """The same day ``months`` later (earlier if negative), or that month's last day."""
    year, month = divmod(day.year * 12 + day.month - 1 + months, 12)
    return dt.date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def parse_day(value: Any, what: str) -> dt.date:
    """A ``YYYY-MM-DD`` date from a client, or a QueryError naming ``what``."""
    if not isinstance(value, str) or not ISO_DAY.fullmatch(value):
        raise QueryError(f"{what} must be a date like 2026-11-01 (YYYY-MM-DD), not {value!r}")
    try:
        day = dt.date.fromisoformat(value)
    except ValueError as error:
        raise QueryError(f"{what} has an invalid date {value!r}: {error}") from None
    _check_days(day, day, what)
    return day


def explicit_range(value: list[Any], timezone: str, what: str = "date_range") -> DateRange:
    """``[start, end]``: two dates (both included) or two datetimes (``end`` excluded)."""
    if len(value) != 2 or not all(isinstance(item, str) for item in value):
        raise QueryError(f"{what} must be [start, end] as ISO dates or datetimes")
    if all(ISO_DAY.fullmatch(item) for item in value):
        first, last = (parse_day(item, what) for item in value)
        _check_days(first, last, what)
        return days_range(first, last, timezone)
    if not all(ISO_MOMENT.match(item) for item in value):
        raise QueryError(
            f"{what} must be two dates (YYYY-MM-DD) or two datetimes "
            "(YYYY-MM-DDTHH:MM:SS, with an optional UTC offset)"
        )
    try:
        moments = [dt.datetime.fromisoformat(item) for item in value]
    except ValueError as error:
        raise QueryError(f"{what} has an invalid datetime: {error}") from None
    _check_days(*(moment.date() for moment in moments), what)
    zone = zoneinfo.ZoneInfo(timezone)
    start, end = (_aware(moment, zone) for moment in moments)
    if end <= start:
        raise QueryError(f"{what} ends before it starts")
    return _moments_range(start, end, zone)


def _check_days(first: dt.date, last: dt.date, what: str = "date_range") -> None:
    if not FIRST_DAY <= first <= LAST_DAY or not FIRST_DAY <= last <= LAST_DAY:
        raise QueryError(f"{what} must lie between {FIRST_DAY} and {LAST_DAY}")
    if last < first:
        raise QueryError(f"{what} ends before it starts")


def _aware(moment: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def previous_period(date_range: DateRange, mode: str, timezone: str) -> DateRange:
    """The range a comparison is made against: as many days (or, for a range of
    datetimes such as 24h, as long a time) just before, or the same range a year
    earlier."""
    zone = zoneinfo.ZoneInfo(timezone)
    whole_days = date_range == days_range(date_range.first_day, date_range.last_day, timezone)
    try:
        if mode == "year_over_year" and whole_days:
            first, last = (_add_months(d, -12) for d in (date_range.first_day, date_range.last_day))
            compared = days_range(first, last, timezone)
        elif mode == "year_over_year":
            start, end = (
                dt.datetime.combine(_add_months(local.date(), -12), local.time(), zone)
                for local in (date_range.start.astimezone(zone), date_range.end.astimezone(zone))
            )
            compared = _moments_range(start, end, zone)
        elif whole_days:
            last = date_range.first_day - dt.timedelta(days=1)
            days = (date_range.last_day - date_range.first_day).days + 1
            compared = days_range(last - dt.timedelta(days=days - 1), last, timezone)
        else:
            length = date_range.end - date_range.start
            compared = _moments_range(date_range.start - length, date_range.start, zone)
    except (OverflowError, ValueError):  # before the first day dates can hold
        compared = None
    if compared is None or compared.first_day < FIRST_DAY:
        raise QueryError(f"a comparison's date_range must start on or after {FIRST_DAY}")
    return compared


def _moments_range(start: dt.datetime, end: dt.datetime, zone: zoneinfo.ZoneInfo) -> DateRange:
    """From ``start`` (included) to ``end`` (excluded), with their local days."""
    return DateRange(
        start.astimezone(dt.UTC),
        end.astimezone(dt.UTC),
        start.astimezone(zone).date(),
        (end - dt.timedelta(microseconds=1)).astimezone(zone).date(),
    )
