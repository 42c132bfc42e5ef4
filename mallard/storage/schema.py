"""The stored event: one Arrow schema, one in-memory row type, one conversion.

The writer, the query engine and the tests all import from here, so the shape
of an event on disk is defined in exactly one place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple

import pyarrow as pa

REVENUE_TYPE = pa.decimal128(12, 2)
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("site_id", pa.string(), nullable=False),
        pa.field("visitor_id", pa.int64(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("event_name", pa.string(), nullable=False),
        pa.field("pathname", pa.string(), nullable=False),
        pa.field("hostname", pa.string(), nullable=False),
        pa.field("referrer", pa.string()),
        pa.field("referrer_source", pa.string()),
        pa.field("utm_source", pa.string()),
        pa.field("utm_medium", pa.string()),
        pa.field("utm_campaign", pa.string()),
        pa.field("utm_content", pa.string()),
        pa.field("utm_term", pa.string()),
        pa.field("browser", pa.string()),
        pa.field("browser_version", pa.string()),
        pa.field("os", pa.string()),
        pa.field("os_version", pa.string()),
        pa.field("device_type", pa.string()),
        pa.field("screen_width", pa.int32()),
        pa.field("country_code", pa.string()),
        pa.field("region", pa.string()),
        pa.field("city", pa.string()),
        pa.field("props", pa.string()),
        pa.field("revenue_amount", REVENUE_TYPE),
        pa.field("revenue_currency", pa.string()),
    ]
)


def converts(source: pa.DataType, target: pa.DataType) -> bool:
    """True when another tool's column of type ``source`` reads as a ``target`` column
    (``EVENT_SCHEMA``'s): text as text, whole numbers as whole numbers, any timestamp as
    a UTC timestamp (one without a zone is taken as UTC), numbers as amounts."""
    if pa.types.is_dictionary(source):
        source = source.value_type
    if pa.types.is_timestamp(target):
        return pa.types.is_timestamp(source)
    if pa.types.is_string(target):
        return pa.types.is_string(source) or pa.types.is_large_string(source)
    if pa.types.is_integer(target):
        return pa.types.is_integer(source)
    if pa.types.is_decimal(target):
        return any(is_kind(source) for is_kind in (
            pa.types.is_decimal, pa.types.is_floating, pa.types.is_integer
        ))  # fmt: skip
    return source == target


def is_event_schema(schema: pa.Schema) -> bool:
    """True when ``schema`` has exactly ``EVENT_SCHEMA``'s columns, in order (a file
    Mallard wrote): read as it is, with no column to convert."""
    return [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in EVENT_SCHEMA]


def unconvertible(schema: pa.Schema) -> str | None:
    """Why a file of ``schema`` cannot be read as events (a column of its that does not
    convert), or None."""
    for column in EVENT_SCHEMA:
        if column.name in schema.names:
            kind = schema.field(column.name).type
            if not converts(kind, column.type):
                return f"its column {column.name} is {kind}, not {column.type}"
    return None


MICROS_PER_DAY = 86_400_000_000
EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly (no float)."""
    return (moment - EPOCH_UTC) // dt.timedelta(microseconds=1)


# Event columns a visit takes from its first event.
VISIT_ATTRIBUTES = (
    "referrer_source", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_content",
    "utm_term", "device_type", "browser", "browser_version", "os", "os_version", "country_code",
    "region", "city",
)  # fmt: skip

# The visit dimensions a visit's ``seen_gap_*`` columns look back by.
SEEN_BY = ("entry_page", "exit_page", *VISIT_ATTRIBUTES)

# One row per visit: what compaction writes beside a day's compacted events
# (``data_dir/visits/``) so visit metrics read visits instead of rebuilding them.
VISIT_SCHEMA = pa.schema(
    [
        pa.field("visitor_id", pa.int64(), nullable=False),
        pa.field("visit_start", TIMESTAMP_TYPE, nullable=False),
        pa.field("visit_end", TIMESTAMP_TYPE, nullable=False),
        pa.field("visit_events", pa.int64(), nullable=False),
        pa.field("visit_pageviews", pa.int64(), nullable=False),
        pa.field("entry_page", pa.string()),
        pa.field("exit_page", pa.string()),
        *(pa.field(f"visit_{name}", EVENT_SCHEMA.field(name).type) for name in VISIT_ATTRIBUTES),
        pa.field("visit_revenue", pa.decimal128(38, 2)),
        pa.field("visit_revenue_events", pa.int64(), nullable=False),
        # when the visitor's previous visit started, and how many microseconds
        # before that their previous visit with the same entry page, source,
        # country… did (0: the same visit; null: none known). Filled in with the
        # pairs (mallard.storage.pairs), null until then.
        pa.field("seen_visitor", TIMESTAMP_TYPE),
        *(pa.field(f"seen_gap_{name}", pa.int64()) for name in SEEN_BY),
    ]
)


# Per compacted day, each (page or event name, visitor) pair of the day once, and
# when the pair was last seen on an earlier day (``data_dir/pairs/``): distinct
# visitors per page over a range without a distinct count (mallard.storage.pairs).
PAIR_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # "page" (pageviews) or "name" (events)
        pa.field("value", pa.string(), nullable=False),  # the page or event name, as labelled
        pa.field("visitor_id", pa.int64(), nullable=False),
        pa.field("events", pa.int64(), nullable=False),
        pa.field("revenue", pa.decimal128(38, 2)),
        pa.field("revenue_events", pa.int64(), nullable=False),
        pa.field("last_seen", TIMESTAMP_TYPE, nullable=False),
        pa.field("previously_seen", TIMESTAMP_TYPE),
    ]
)

# Per compacted day (``data_dir/steps/``), every event once as a funnel step can match it:
# a pageview as ("page", its page), any other event as ("name", its name); and every
# visitor of the day once, as ("visitor", null) with their ``visitor_id`` and the time
# of their first event. ``visitor_number`` is the visitor's number in the site, the
# same on every day: funnels index arrays with it instead of hashing visitor ids.
# Sorted by kind, value, visitor id and number, and time: a common value has row
# groups of its own (mallard.storage.pairs).
STEP_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # "page", "name" or "visitor"
        pa.field("value", pa.string()),  # null: a visitor, or a pageview without a page
        pa.field("visitor_id", pa.int64()),  # on visitor rows only
        pa.field("visitor_number", pa.int64(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE, nullable=False),
    ]
)


class Event(NamedTuple):
    """One accepted event, held as a tuple until it is flushed.

    Fields are in ``EVENT_SCHEMA`` order; ``timestamp`` is microseconds since
    the Unix epoch (UTC). A tuple costs a fraction of a dict per event.
    """

    site_id: str
    visitor_id: int
    timestamp: int
    event_name: str
    pathname: str
    hostname: str
    referrer: str | None
    referrer_source: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_content: str | None
    utm_term: str | None
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device_type: str | None
    screen_width: int | None
    country_code: str | None
    region: str | None
    city: str | None
    props: str | None
    revenue_amount: Decimal | None
    revenue_currency: str | None

    @property
    def day(self) -> int:
        """Days since the epoch of the event's UTC timestamp: its date partition."""
        return self.timestamp // MICROS_PER_DAY


assert Event._fields == tuple(EVENT_SCHEMA.names), "Event and EVENT_SCHEMA must agree"


def events_to_table(events: Sequence[Event]) -> pa.Table:
    """Turn buffered rows into an Arrow table of ``EVENT_SCHEMA``."""
    columns = list(zip(*events, strict=True)) if events else [()] * len(EVENT_SCHEMA)
    arrays = [
        pa.array(column, type=field.type)
        for column, field in zip(columns, EVENT_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
