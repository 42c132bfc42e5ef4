"""Events and request bodies shared by the tests."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mallard.storage.schema import Event

DAY_US = 86_400_000_000

# The request body of the ingestion spec's own example, field for field.
SEED_EXAMPLE = {
    "d": "example.com",
    "n": "pageview",
    "u": "https://example.com/pricing",
    "r": "https://google.com/",
    "w": 1920,
    "p": '{"plan": "pro"}',
    "ra": 99.00,
    "rc": "USD",
}


def make_event(**fields: Any) -> Event:
    """An event with every optional column empty, unless given."""
    values: dict[str, Any] = dict.fromkeys(Event._fields)
    values.update(
        site_id="example.com", visitor_id=1, timestamp=20_000 * DAY_US,
        event_name="pageview", pathname="/", hostname=fields.get("site_id", "example.com"),
    )  # fmt: skip
    values.update(fields)
    return Event(**values)


def make_events(count: int, sites: tuple[str, ...] = ("a.com", "b.org", "c.net")) -> list[Event]:
    """``count`` distinct events over ``sites`` on one day, some with props and revenue."""
    return [
        make_event(
            site_id=sites[i % len(sites)],
            visitor_id=i,
            timestamp=20_000 * DAY_US + i,
            pathname=f"/p/{i}",
            browser="Firefox",
            browser_version="125.0",
            os="Linux",
            device_type="Desktop",
            screen_width=1920,
            country_code="DE",
            props='{"k":"v"}' if i % 2 else None,
            revenue_amount=Decimal("9.99") if i % 5 == 0 else None,
            revenue_currency="EUR" if i % 5 == 0 else None,
        )
        for i in range(count)
    ]


def stored_events(events_folder: Path) -> list[Event]:
    """Every event in the Parquet files under ``events_folder``, oldest first."""
    events = []
    for file in sorted(events_folder.rglob("*.parquet")):
        for row in pq.read_table(file).to_pylist():
            row["timestamp"] = int(row["timestamp"].timestamp() * 1_000_000)
            events.append(Event(**{name: row[name] for name in Event._fields}))
    events.sort(key=lambda event: event.timestamp)
    return events
