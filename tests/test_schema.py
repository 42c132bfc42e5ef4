"""The stored event: Arrow schema, row type and their conversion."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa

from mallard.storage.schema import EVENT_SCHEMA, MICROS_PER_DAY, Event, events_to_table

INTERFACE_COLUMNS = [
    "site_id",
    "visitor_id",
    "timestamp",
    "event_name",
    "pathname",
    "hostname",
    "referrer",
    "referrer_source",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "device_type",
    "screen_width",
    "country_code",
    "props",
    "revenue_amount",
    "revenue_currency",
]

FULL = Event(
    site_id="example.com",
    visitor_id=-(2**63),
    timestamp=1_719_360_000_123_456,  # 2024-06-26 00:00:00.123456 UTC
    event_name="purchase",
    pathname="/checkout",
    hostname="example.com",
    referrer="https://www.google.com/",
    referrer_source="Google",
    utm_source="google",
    utm_medium="cpc",
    utm_campaign="spring",
    utm_content="ad1",
    utm_term="shoes",
    browser="Chrome",
    browser_version="124.0",
    os="Windows",
    os_version="10",
    device_type="Desktop",
    screen_width=1920,
    country_code="DE",
    region="Berlin",
    city="Berlin",
    props='{"plan":"pro"}',
    revenue_amount=Decimal("9999999999.99"),
    revenue_currency="USD",
)
SPARSE = FULL._replace(
    **{name: None for name in Event._fields[6:]}, visitor_id=2**63 - 1, timestamp=0
)


def test_event_fields_equal_schema_names() -> None:
    assert Event._fields == tuple(EVENT_SCHEMA.names)


def test_interface_columns_are_in_the_schema() -> None:
    assert set(INTERFACE_COLUMNS) <= set(EVENT_SCHEMA.names)


def test_column_types() -> None:
    assert EVENT_SCHEMA.field("revenue_amount").type == pa.decimal128(12, 2)
    assert EVENT_SCHEMA.field("visitor_id").type == pa.int64()
    assert EVENT_SCHEMA.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert EVENT_SCHEMA.field("props").type == pa.string()
    required = {field.name for field in EVENT_SCHEMA if not field.nullable}
    assert required == {"site_id", "visitor_id", "timestamp", "event_name", "pathname", "hostname"}


def test_events_to_table_round_trip() -> None:
    table = events_to_table([FULL, SPARSE])
    assert table.schema == EVENT_SCHEMA
    assert table.num_rows == 2
    rows = table.to_pylist()
    assert rows[0]["revenue_amount"] == Decimal("9999999999.99")
    assert rows[0]["visitor_id"] == -(2**63)
    assert rows[0]["timestamp"].isoformat() == "2024-06-26T00:00:00.123456+00:00"
    assert rows[1]["visitor_id"] == 2**63 - 1
    assert [rows[0][name] for name in Event._fields[3:23]] == list(FULL[3:23])
    assert all(rows[1][name] is None for name in Event._fields[6:])


def test_events_to_table_empty() -> None:
    table = events_to_table([])
    assert table.schema == EVENT_SCHEMA
    assert table.num_rows == 0


def test_event_day_is_the_utc_date_partition() -> None:
    assert FULL.day == 19_900
    assert FULL._replace(timestamp=19_900 * MICROS_PER_DAY - 1).day == 19_899
