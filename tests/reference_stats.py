"""A plain-Python reference for Mallard's web-analytics metrics.

Everything here is written for clarity, not speed, and uses nothing but the
standard library (no DuckDB, no Arrow), so tests can compare the query engine
against an independent implementation of the same definitions. The docstrings
are the specification the engine is built to match.

Shared definitions
------------------
Event
    A :class:`mallard.storage.schema.Event`. ``timestamp`` is integer
    microseconds since the Unix epoch, UTC. ``event_name == "pageview"`` marks a
    page view; any other name is a custom event.
Time range
    ``start_us``/``end_us`` select the events with
    ``start_us <= timestamp < end_us``; ``None`` leaves that side open. Events
    outside the range are ignored by everything, including visit building.
Visit (session)
    Built from the events in range only (see :func:`sessions`): a visit that
    began before ``start_us`` is cut, and its in-range events form a visit of
    their own. Every visit built this way starts inside the range. A visit
    also ends at UTC midnight: the next event opens a new one.
Filters
    A list of ``[operator, dimension, values]`` (optionally a fourth element
    ``{"case_sensitive": False}``), all of which must hold (AND), as in
    Plausible's Stats API v2. Operators: ``is``, ``is_not``, ``contains``,
    ``contains_not``. The tested value is a string; a missing value (``None``)
    is tested as the label ``"(none)"``, so ``is_not ["x"]`` keeps events whose
    value is missing, and ``is ["(none)"]`` selects them. Values are compared
    with ``str()`` of each given value. ``contains`` is a substring test.

    Each filter is evaluated per event, on the pair (event, its visit):

    * event dimensions (``event:name``, ``event:goal`` (an alias of
      ``event:name``), ``event:page`` (pathname), ``event:hostname``,
      ``event:props:<key>``) test the event itself;
    * visit dimensions (``visit:source``, ``visit:entry_page``,
      ``visit:exit_page``, ``visit:utm_source``/``medium``/``campaign``/
      ``content``/``term``, ``visit:device``, ``visit:browser``, ``visit:os``,
      ``visit:country``) test the event's visit, so they keep or drop whole
      visits with all their events.

    The events that pass are the *selected* events.
Event metrics
    Computed over the selected events: ``visitors`` (distinct visitor ids),
    ``pageviews`` (selected events named ``pageview``), ``events`` (all selected
    events), ``total_revenue`` (sum of ``revenue_amount``) and
    ``average_revenue`` (mean over selected events with a revenue amount).
Visit metrics
    Computed over the *matched* visits: the visits that contain at least one
    selected event (with no filters, every visit in range). ``visits`` counts
    them; ``views_per_visit``, ``bounce_rate`` and ``visit_duration`` use the
    whole matched visits (all their pageviews, their full duration), not only
    their selected events.
Rounding
    Ratios are computed exactly (fractions) and then rounded half away from
    zero ("half up"; all values are non-negative), like DuckDB's ``round`` and
    unlike Python's banker's rounding.
Missing values as labels
    In breakdowns a missing dimension value is reported as ``"(none)"``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from mallard.storage.schema import Event

PAGEVIEW = "pageview"
VISIT_TIMEOUT_S = 1800
MICROS_PER_SECOND = 1_000_000
MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND
NONE_LABEL = "(none)"
PROPS_PREFIX = "event:props:"

EVENT_METRICS = ("visitors", "pageviews", "events", "total_revenue", "average_revenue")
VISIT_METRICS = ("visits", "views_per_visit", "bounce_rate", "visit_duration")
METRICS = (*EVENT_METRICS, *VISIT_METRICS, "conversion_rate")

# event dimension -> Event field it reads
EVENT_DIMENSIONS = {
    "event:name": "event_name",
    "event:goal": "event_name",
    "event:page": "pathname",
    "event:hostname": "hostname",
}
GOAL_DIMENSIONS = ("event:name", "event:goal")
# visit dimension -> Session field it reads
VISIT_DIMENSIONS = {
    "visit:entry_page": "entry_page",
    "visit:exit_page": "exit_page",
    "visit:source": "referrer_source",
    "visit:utm_source": "utm_source",
    "visit:utm_medium": "utm_medium",
    "visit:utm_campaign": "utm_campaign",
    "visit:utm_content": "utm_content",
    "visit:utm_term": "utm_term",
    "visit:device": "device_type",
    "visit:browser": "browser",
    "visit:os": "os",
    "visit:country": "country_code",
}
FILTER_OPERATORS = ("is", "is_not", "contains", "contains_not")

MetricValue = int | float | Decimal
Metrics = dict[str, MetricValue]


@dataclass(frozen=True)
class Session:
    """One visit of one visitor; see :func:`sessions` for how it is built.

    ``start_us``/``end_us`` are the timestamps of its first and last event;
    ``events`` and ``pageviews`` are counts; ``entry_page``/``exit_page`` are
    the pathnames of its first and last pageview (``None`` without pageviews);
    ``is_bounce`` is true for exactly one event which is a pageview;
    ``duration_s = (end_us - start_us) / 1e6``. The remaining fields are copied
    from the visit's first event.
    """

    visitor_id: int
    start_us: int
    end_us: int
    events: int
    pageviews: int
    entry_page: str | None
    exit_page: str | None
    is_bounce: bool
    duration_s: float
    referrer_source: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_content: str | None
    utm_term: str | None
    browser: str | None
    os: str | None
    device_type: str | None
    country_code: str | None


# --- visits ---


def _visit_groups(events: Sequence[Event], timeout_s: int) -> list[list[Event]]:
    """The events of each visit, in visit order; see :func:`sessions`."""
    by_visitor: dict[int, list[tuple[int, int, Event]]] = {}
    for position, event in enumerate(events):
        by_visitor.setdefault(event.visitor_id, []).append((event.timestamp, position, event))
    timeout_us = timeout_s * MICROS_PER_SECOND
    groups: list[list[Event]] = []
    for entries in by_visitor.values():
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        current: list[Event] = []
        for _, _, event in entries:
            if current and (
                event.timestamp - current[-1].timestamp > timeout_us
                or event.timestamp // MICROS_PER_DAY != current[-1].timestamp // MICROS_PER_DAY
            ):
                groups.append(current)
                current = []
            current.append(event)
        groups.append(current)
    groups.sort(key=lambda group: (group[0].timestamp, group[0].visitor_id))
    return groups


def _summarise(group: list[Event]) -> Session:
    """The :class:`Session` of one visit's events, already in visit order."""
    first, last = group[0], group[-1]
    pages = [event.pathname for event in group if event.event_name == PAGEVIEW]
    return Session(
        visitor_id=first.visitor_id,
        start_us=first.timestamp,
        end_us=last.timestamp,
        events=len(group),
        pageviews=len(pages),
        entry_page=pages[0] if pages else None,
        exit_page=pages[-1] if pages else None,
        is_bounce=len(group) == 1 and len(pages) == 1,
        duration_s=(last.timestamp - first.timestamp) / MICROS_PER_SECOND,
        referrer_source=first.referrer_source,
        utm_source=first.utm_source,
        utm_medium=first.utm_medium,
        utm_campaign=first.utm_campaign,
        utm_content=first.utm_content,
        utm_term=first.utm_term,
        browser=first.browser,
        os=first.os,
        device_type=first.device_type,
        country_code=first.country_code,
    )


def sessions(events: Sequence[Event], timeout_s: int = VISIT_TIMEOUT_S) -> list[Session]:
    """Split every visitor's events into visits.

    Events are grouped by ``visitor_id`` and ordered by ``timestamp``; events
    with equal timestamps keep their order in ``events``. A visitor's event
    starts a new visit when it comes *more than* ``timeout_s`` seconds after
    the visitor's previous event (a gap of exactly ``timeout_s`` continues the
    visit). The gap is measured from the previous event, not from the visit's
    start. An event on a later UTC day than the previous one also starts a new
    visit, so a visit never spans midnight UTC.

    Entry and exit page are the pathnames of the visit's first and last
    pageview in that order (``None`` if it has no pageview); a bounce is a
    visit of exactly one event, a pageview (a pageview plus a custom event is
    not a bounce). Source, UTM, browser, OS, device and country come from the
    visit's first event.

    The result is ordered by (``start_us``, ``visitor_id``).
    """
    return [_summarise(group) for group in _visit_groups(events, timeout_s)]


# --- filters ---


@dataclass(frozen=True)
class _Condition:
    operator: str
    dimension: str
    values: tuple[str, ...]
    case_sensitive: bool


def _parse_filters(filters: Iterable[Sequence[Any]] | None) -> list[_Condition]:
    conditions = []
    for item in filters or ():
        if len(item) not in (3, 4):
            raise ValueError(f"filter {item!r} must be [operator, dimension, values]")
        operator, dimension, values = item[0], item[1], item[2]
        if operator not in FILTER_OPERATORS:
            raise ValueError(f"unsupported filter operator {operator!r}")
        _check_dimension(dimension)
        case_sensitive = bool(item[3].get("case_sensitive", True)) if len(item) == 4 else True
        conditions.append(
            _Condition(operator, dimension, tuple(str(v) for v in values), case_sensitive)
        )
    return conditions


def _check_dimension(dimension: str) -> None:
    prop = dimension.startswith(PROPS_PREFIX) and len(dimension) > len(PROPS_PREFIX)
    if not (prop or dimension in EVENT_DIMENSIONS or dimension in VISIT_DIMENSIONS):
        raise ValueError(f"unknown dimension {dimension!r}")


def _prop(props: str | None, key: str) -> str | None:
    """``props[key]`` as text: strings as they are, other JSON values as compact JSON.

    ``None`` when ``props`` is empty, not a JSON object, lacks the key, or the
    value is JSON ``null``. Booleans read ``"true"``/``"false"``.
    """
    if not props:
        return None
    try:
        data = json.loads(props)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get(key) is None:
        return None
    value = data[key]
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def dimension_value(dimension: str, event: Event, visit: Session) -> str | None:
    """The value ``dimension`` has for ``event``, which belongs to ``visit``."""
    if dimension in EVENT_DIMENSIONS:
        return getattr(event, EVENT_DIMENSIONS[dimension])
    if dimension in VISIT_DIMENSIONS:
        return getattr(visit, VISIT_DIMENSIONS[dimension])
    if dimension.startswith(PROPS_PREFIX):
        return _prop(event.props, dimension[len(PROPS_PREFIX) :])
    raise ValueError(f"unknown dimension {dimension!r}")


def _holds(condition: _Condition, event: Event, visit: Session) -> bool:
    value = dimension_value(condition.dimension, event, visit)
    text = NONE_LABEL if value is None else value
    values = condition.values
    if not condition.case_sensitive:
        text = text.lower()
        values = tuple(v.lower() for v in values)
    if condition.operator in ("is", "is_not"):
        found = text in values
    else:
        found = any(v in text for v in values)
    return not found if condition.operator.endswith("_not") else found


def _is_goal(condition: _Condition) -> bool:
    return condition.dimension in GOAL_DIMENSIONS


# --- selection ---


@dataclass(frozen=True)
class _Row:
    """An in-range event with the index of its visit in ``_Scope.visits``."""

    event: Event
    visit: int


@dataclass(frozen=True)
class _Scope:
    visits: list[Session]
    rows: list[_Row]

    def select(self, conditions: list[_Condition]) -> list[_Row]:
        return [
            row
            for row in self.rows
            if all(_holds(c, row.event, self.visits[row.visit]) for c in conditions)
        ]


def _scope(events: Sequence[Event], start_us: int | None, end_us: int | None) -> _Scope:
    """The events in ``[start_us, end_us)`` and the visits built from them alone."""
    in_range = [
        event
        for event in events
        if (start_us is None or event.timestamp >= start_us)
        and (end_us is None or event.timestamp < end_us)
    ]
    groups = _visit_groups(in_range, VISIT_TIMEOUT_S)
    visits = [_summarise(group) for group in groups]
    rows = [_Row(event, index) for index, group in enumerate(groups) for event in group]
    return _Scope(visits, rows)


def selected_events(
    events: Sequence[Event],
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    filters: Iterable[Sequence[Any]] | None = None,
) -> list[Event]:
    """The events in range that pass every filter, in visit order."""
    scope = _scope(events, start_us, end_us)
    return [row.event for row in scope.select(_parse_filters(filters))]


# --- metrics ---


def round_half_up(value: Fraction | int, places: int) -> Decimal:
    """``value`` (non-negative) rounded to ``places`` decimals, halves away from zero."""
    scaled = Fraction(value) * 10**places
    units = math.floor(abs(scaled) + Fraction(1, 2))
    return Decimal(-units if scaled < 0 else units).scaleb(-places)


def _distinct_visitors(rows: Iterable[_Row]) -> int:
    return len({row.event.visitor_id for row in rows})


def _metrics(
    metrics: Sequence[str],
    rows: Sequence[_Row],
    visits: Sequence[Session],
    base_visitors: int | None,
) -> Metrics:
    """The requested metrics of selected ``rows`` and matched ``visits``.

    ``base_visitors`` is the conversion-rate denominator (``None`` if unused).
    """
    result: Metrics = {}
    revenues = [row.event.revenue_amount for row in rows if row.event.revenue_amount is not None]
    for metric in metrics:
        if metric == "visitors":
            result[metric] = _distinct_visitors(rows)
        elif metric == "pageviews":
            result[metric] = sum(1 for row in rows if row.event.event_name == PAGEVIEW)
        elif metric == "events":
            result[metric] = len(rows)
        elif metric == "total_revenue":
            result[metric] = round_half_up(Fraction(sum(revenues, Decimal(0))), 2)
        elif metric == "average_revenue":
            mean = Fraction(sum(revenues, Decimal(0))) / len(revenues) if revenues else 0
            result[metric] = round_half_up(mean, 2)
        elif metric == "visits":
            result[metric] = len(visits)
        elif metric == "views_per_visit":
            ratio = Fraction(sum(v.pageviews for v in visits), len(visits)) if visits else 0
            result[metric] = float(round_half_up(ratio, 2))
        elif metric == "bounce_rate":
            share = Fraction(sum(v.is_bounce for v in visits), len(visits)) if visits else 0
            result[metric] = int(round_half_up(share * 100, 0))
        elif metric == "visit_duration":
            total_us = sum(v.end_us - v.start_us for v in visits)
            mean_s = Fraction(total_us, len(visits) * MICROS_PER_SECOND) if visits else 0
            result[metric] = int(round_half_up(mean_s, 0))
        elif metric == "conversion_rate":
            if base_visitors is None:
                raise ValueError("conversion_rate needs an event:name/event:goal filter")
            converted = _distinct_visitors(rows)
            rate = Fraction(100 * converted, base_visitors) if base_visitors else 0
            result[metric] = float(round_half_up(rate, 2))
        else:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return result


def _matched_visits(scope: _Scope, rows: Iterable[_Row]) -> list[Session]:
    return [scope.visits[index] for index in sorted({row.visit for row in rows})]


def aggregate(
    events: Sequence[Event],
    metrics: Sequence[str],
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    filters: Iterable[Sequence[Any]] | None = None,
) -> Metrics:
    """Totals of ``metrics`` over the events in ``[start_us, end_us)`` that pass ``filters``.

    See the module docstring for the time range, visits, filters, selected
    events and matched visits. Per metric:

    * ``visitors``: distinct ``visitor_id`` of the selected events (``int``).
    * ``pageviews``: selected events named ``pageview`` (``int``).
    * ``events``: selected events of any name (``int``).
    * ``total_revenue``: sum of ``revenue_amount`` over the selected events
      (``Decimal`` with 2 places; ``0.00`` if none has revenue).
    * ``average_revenue``: that sum divided by the number of selected events
      *with* a revenue amount, rounded half up to 2 places (``Decimal``;
      ``0.00`` if none).
    * ``visits``: number of matched visits (``int``).
    * ``views_per_visit``: all pageviews of the matched visits (selected or
      not) / matched visits, rounded half up to 2 decimals (``float``; 0 when
      there are no visits).
    * ``bounce_rate``: bouncing matched visits / matched visits * 100, rounded
      half up to an ``int`` (0 when there are no visits).
    * ``visit_duration``: mean of (last - first event time) over matched visits
      in seconds, rounded half up to an ``int`` (0 when no visits).
    * ``conversion_rate``: only with a goal filter (a top-level filter on
      ``event:name`` or ``event:goal``): visitors of the selected events /
      visitors of the events selected by the filters *without* the goal
      filters * 100, rounded half up to 2 decimals (``float``; 0 when the
      denominator is 0). With the goal filter alone the denominator is all
      visitors in range.
    """
    scope = _scope(events, start_us, end_us)
    conditions = _parse_filters(filters)
    rows = scope.select(conditions)
    base = None
    if "conversion_rate" in metrics:
        if not any(_is_goal(c) for c in conditions):
            raise ValueError("conversion_rate needs an event:name/event:goal filter")
        base = _distinct_visitors(scope.select([c for c in conditions if not _is_goal(c)]))
    return _metrics(metrics, rows, _matched_visits(scope, rows), base)


def breakdown(
    events: Sequence[Event],
    dimension: str,
    metrics: Sequence[str],
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    filters: Iterable[Sequence[Any]] | None = None,
) -> list[tuple[str, Metrics]]:
    """``metrics`` per value of ``dimension``, as ``[(value, {metric: number})]``.

    The selected events (see :func:`aggregate`) are grouped by the value the
    dimension has for each of them (missing values as ``"(none)"``). A group's
    event metrics are computed over its events; its visit metrics over the
    visits that contain at least one of its events (whole visits, as in
    :func:`aggregate`). Only values that occur among the grouped events appear.

    * ``event:page`` groups the selected *pageview* events only, by pathname:
      a custom event sent from ``/x`` neither creates the row ``/x`` nor counts
      towards its visitors or visits.
    * ``event:name`` (and ``event:goal``), ``event:hostname`` and
      ``event:props:<key>`` group every selected event by that event field.
    * ``visit:*`` dimensions group by the visit's attribute, so a visit and all
      its selected events land in one row (for example ``visit:entry_page``
      counts the pageviews of the visits that entered on that page).

    ``conversion_rate`` needs a goal filter or a goal dimension; its
    denominator is the visitors selected without the goal filters, within the
    row's value for non-goal dimensions and overall for ``event:name``/
    ``event:goal``.

    Rows are sorted by the first metric descending, then by value ascending
    (code-point order).
    """
    _check_dimension(dimension)
    scope = _scope(events, start_us, end_us)
    conditions = _parse_filters(filters)
    goal_dimension = dimension in GOAL_DIMENSIONS

    def grouped(rows: list[_Row]) -> dict[str, list[_Row]]:
        groups: dict[str, list[_Row]] = {}
        for row in rows:
            if dimension == "event:page" and row.event.event_name != PAGEVIEW:
                continue
            value = dimension_value(dimension, row.event, scope.visits[row.visit])
            groups.setdefault(NONE_LABEL if value is None else value, []).append(row)
        return groups

    groups = grouped(scope.select(conditions))
    base_groups: dict[str, list[_Row]] = {}
    base_total = 0
    if "conversion_rate" in metrics:
        if not goal_dimension and not any(_is_goal(c) for c in conditions):
            raise ValueError("conversion_rate needs a goal filter or dimension")
        base_rows = scope.select([c for c in conditions if not _is_goal(c)])
        base_groups = grouped(base_rows)
        base_total = _distinct_visitors(base_rows)

    result = []
    for value, rows in groups.items():
        base = None
        if "conversion_rate" in metrics:
            base = base_total if goal_dimension else _distinct_visitors(base_groups.get(value, []))
        result.append((value, _metrics(metrics, rows, _matched_visits(scope, rows), base)))
    first = metrics[0]
    result.sort(key=lambda item: item[0])
    result.sort(key=lambda item: item[1][first], reverse=True)
    return result


# --- time ---


def to_local(timestamp_us: int, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The wall-clock time (naive) of a UTC microsecond timestamp in ``zone``."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=timestamp_us)
    return moment.astimezone(zone).replace(tzinfo=None)


def local_midnight_us(day: dt.date, zone: zoneinfo.ZoneInfo) -> int:
    """The UTC microsecond timestamp at which ``day`` begins in ``zone``."""
    moment = dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _bucket_label(local: dt.datetime, interval: str) -> str:
    if interval == "hour":
        return local.strftime("%Y-%m-%d %H:00:00")
    day = local.date()
    if interval == "week":
        day -= dt.timedelta(days=day.weekday())
    elif interval == "month":
        day = day.replace(day=1)
    return day.isoformat()


def timeseries(
    events: Sequence[Event],
    interval: str,
    timezone: str,
    start_date: dt.date,
    end_date: dt.date,
    metrics: Sequence[str],
    *,
    filters: Iterable[Sequence[Any]] | None = None,
) -> list[tuple[str, Metrics]]:
    """``metrics`` per local hour, day, week or month, as ``[(label, {metric: number})]``.

    The range is the whole local days ``start_date``..``end_date`` (inclusive)
    in the IANA zone ``timezone``: from local midnight of ``start_date`` to
    local midnight after ``end_date``, as UTC timestamps. Visits are built from
    the events in that range (see :func:`aggregate`), never cut at bucket
    borders.

    Buckets are local wall-clock days (label ``YYYY-MM-DD``), weeks from Monday
    (the Monday's date, also for a first week begun before the range), months
    (``YYYY-MM-01``) or hours (label ``YYYY-MM-DD HH:00:00``). Every bucket of
    the range is listed, oldest first, with zeros where nothing happened.
    Hourly labels step through naive wall-clock hours: on a spring-forward day
    the skipped hour is still listed (always zero), on a fall-back day the
    repeated hour is one bucket holding both real hours.

    Event metrics count the selected events in the bucket of their own
    timestamp (a visitor active in two buckets counts in both). Visit metrics
    count each matched visit once, in the bucket of its *first* event, even if
    it continues into later buckets. ``conversion_rate``'s denominator is the
    per-bucket visitors selected without the goal filters.
    """
    if interval not in ("hour", "day", "week", "month"):
        raise ValueError("interval must be hour, day, week or month")
    zone = zoneinfo.ZoneInfo(timezone)
    start_us = local_midnight_us(start_date, zone)
    end_us = local_midnight_us(end_date + dt.timedelta(days=1), zone)
    scope = _scope(events, start_us, end_us)
    conditions = _parse_filters(filters)
    rows = scope.select(conditions)
    base_rows: list[_Row] = []
    if "conversion_rate" in metrics:
        if not any(_is_goal(c) for c in conditions):
            raise ValueError("conversion_rate needs an event:name/event:goal filter")
        base_rows = scope.select([c for c in conditions if not _is_goal(c)])

    def label_of(timestamp_us: int) -> str:
        return _bucket_label(to_local(timestamp_us, zone), interval)

    step = dt.timedelta(hours=1) if interval == "hour" else dt.timedelta(days=1)
    labels: dict[str, None] = {}  # in order, once each
    moment = dt.datetime.combine(start_date, dt.time())
    while moment.date() <= end_date:
        labels[_bucket_label(moment, interval)] = None
        moment += step

    matched = _matched_visits(scope, rows)
    result = []
    for label in labels:
        bucket_rows = [row for row in rows if label_of(row.event.timestamp) == label]
        bucket_visits = [visit for visit in matched if label_of(visit.start_us) == label]
        base = None
        if "conversion_rate" in metrics:
            base = _distinct_visitors(
                row for row in base_rows if label_of(row.event.timestamp) == label
            )
        result.append((label, _metrics(metrics, bucket_rows, bucket_visits, base)))
    return result


# --- behaviour ---


def _step_matches(step: tuple[str, str], event: Event) -> bool:
    kind, value = step
    if kind == "event":
        return event.event_name == value
    if kind != "page":
        raise ValueError(f"funnel step kind must be page or event, not {kind!r}")
    if event.event_name != PAGEVIEW:
        return False
    if value.endswith("*"):
        return event.pathname.startswith(value[:-1])
    return event.pathname == value


def funnel(
    events: Sequence[Event],
    steps: Sequence[tuple[str, str]],
    window_s: int,
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    filters: Iterable[Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Visitors reaching each step of an ordered funnel, within ``window_s`` seconds.

    A step is ``("page", pathname)`` (a pageview of that exact pathname; a
    pathname ending in ``*`` matches as a prefix) or ``("event", name)`` (an
    event of that name, pageviews included if the name is ``pageview``). Only
    the selected events count (time range and filters as in
    :func:`aggregate`); visits play no part.

    A visitor enters the funnel at the time ``t1`` of their *earliest* step-1
    event (later step-1 events never restart it). Having reached step k-1 at
    time ``t``, they reach step k at the earliest step-k event with
    ``t <= timestamp <= t1 + window_s``; an event at time ``t`` itself only if
    it does not match step k-1 (so ``page:/`` twice takes two pageviews of ``/``,
    at different times).

    One dict per step: ``step`` (1-based), ``name`` (``"page:/x"`` or
    ``"event:X"``), ``visitors``, ``dropoff`` (visitors of the previous step
    minus this step's; 0 for step 1) and ``conversion_rate`` (this step's
    visitors / step 1's * 100, rounded half up to 2 decimals, a ``float``; 0
    when nobody entered).
    """
    if not steps:
        raise ValueError("a funnel needs at least one step")
    chosen = selected_events(events, start_us=start_us, end_us=end_us, filters=filters)
    by_visitor: dict[int, list[Event]] = {}
    for event in chosen:
        by_visitor.setdefault(event.visitor_id, []).append(event)
    window_us = window_s * MICROS_PER_SECOND
    reached = [0] * len(steps)
    for visitor_events in by_visitor.values():
        ordered = sorted(visitor_events, key=lambda event: event.timestamp)
        entries = [event.timestamp for event in ordered if _step_matches(steps[0], event)]
        if not entries:
            continue
        entered = at = entries[0]
        reached[0] += 1
        for index in range(1, len(steps)):
            times = [
                event.timestamp
                for event in ordered
                if _step_matches(steps[index], event)
                and at <= event.timestamp <= entered + window_us
                and (event.timestamp > at or not _step_matches(steps[index - 1], event))
            ]
            if not times:
                break
            at = times[0]
            reached[index] += 1
    result = []
    for index, (kind, value) in enumerate(steps):
        rate = Fraction(100 * reached[index], reached[0]) if reached[0] else 0
        result.append(
            {
                "step": index + 1,
                "name": f"{kind}:{value}",
                "visitors": reached[index],
                "dropoff": reached[index - 1] - reached[index] if index else 0,
                "conversion_rate": float(round_half_up(rate, 2)),
            }
        )
    return result


def period_start(local_day: dt.date, period: str) -> dt.date:
    """The first day of the day/week/month containing ``local_day``; weeks start Monday."""
    if period == "day":
        return local_day
    if period == "week":
        return local_day - dt.timedelta(days=local_day.weekday())
    if period == "month":
        return local_day.replace(day=1)
    raise ValueError("period must be day, week or month")


def periods_between(first: dt.date, later: dt.date, period: str) -> int:
    """How many whole periods separate two period starts."""
    if period == "day":
        return (later - first).days
    if period == "week":
        return (later - first).days // 7
    return (later.year * 12 + later.month) - (first.year * 12 + first.month)


def retention(
    events: Sequence[Event],
    period: str = "week",
    timezone: str = "UTC",
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    filters: Iterable[Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Cohort retention by ``period`` (``day``, ``week`` starting Monday, or ``month``).

    Periods are local to ``timezone``. Only the selected events count (time
    range and filters as in :func:`aggregate`). A visitor's cohort is the
    period of their first selected event; they are *active* in every period in
    which they have a selected event.

    One dict per cohort, oldest first: ``cohort`` (ISO date of the period's
    first day), ``visitors`` (cohort size) and ``periods``: for every offset
    ``k`` from 0 up to the period of the latest selected event overall, the
    dict ``{"offset": k, "visitors": n, "percentage": p}`` where ``n`` counts
    the cohort's visitors active in period cohort + k (zeros included) and
    ``p = n / size * 100`` rounded half up to 2 decimals (``float``). Offset 0
    is always the whole cohort, 100.0.
    """
    zone = zoneinfo.ZoneInfo(timezone)
    chosen = selected_events(events, start_us=start_us, end_us=end_us, filters=filters)
    active: dict[int, set[dt.date]] = {}
    for event in chosen:
        slot = period_start(to_local(event.timestamp, zone).date(), period)
        active.setdefault(event.visitor_id, set()).add(slot)
    if not active:
        return []
    last = max(max(slots) for slots in active.values())
    cohorts: dict[dt.date, list[int]] = {}
    for visitor, slots in active.items():
        cohorts.setdefault(min(slots), []).append(visitor)
    result = []
    for cohort in sorted(cohorts):
        members = cohorts[cohort]
        periods = []
        for offset in range(periods_between(cohort, last, period) + 1):
            count = sum(
                1
                for visitor in members
                if any(periods_between(cohort, slot, period) == offset for slot in active[visitor])
            )
            share = Fraction(100 * count, len(members))
            periods.append(
                {"offset": offset, "visitors": count, "percentage": float(round_half_up(share, 2))}
            )
        result.append({"cohort": cohort.isoformat(), "visitors": len(members), "periods": periods})
    return result
