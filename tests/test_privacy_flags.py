"""``gdpr_mode`` and the individual privacy rules: pure functions, then one real server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from mallard.config import Settings, load_settings
from mallard.ingest.privacy import (
    HOUR_US,
    PrivacyRules,
    field_rules,
    floor_to_hour,
    redactor,
    strip_query,
)
from tests.factories import make_event

ALL_ON = PrivacyRules(True, True, True, True, True)
FIREFOX_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:125.0) Gecko/20100101 Firefox/125.0"


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        ("https://www.google.com/search?q=my+name&client=x", "https://www.google.com/search"),
        ("https://news.example/a/b#section", "https://news.example/a/b"),
        ("https://mail.example/#inbox?token=abc", "https://mail.example/"),
        ("https://example.org/", "https://example.org/"),
        ("https://example.org", "https://example.org"),
        (None, None),
    ],
)
def test_strip_query(url: str | None, stripped: str | None) -> None:
    assert strip_query(url) == stripped


def test_floor_to_hour() -> None:
    moment = dt.datetime(2026, 3, 1, 14, 59, 59, 999_999, tzinfo=dt.UTC)
    micros = int(moment.timestamp()) * 1_000_000 + moment.microsecond
    floored = dt.datetime.fromtimestamp(floor_to_hour(micros) / 1e6, dt.UTC)
    assert floored == dt.datetime(2026, 3, 1, 14, tzinfo=dt.UTC)
    assert floor_to_hour(5 * HOUR_US) == 5 * HOUR_US


def test_gdpr_mode_turns_every_rule_on() -> None:
    assert PrivacyRules.from_settings(Settings()) == PrivacyRules()
    assert PrivacyRules.from_settings(Settings(gdpr_mode=True)) == ALL_ON
    only = PrivacyRules.from_settings(Settings(drop_versions=True, country_only=True))
    assert only == PrivacyRules(drop_versions=True, country_only=True)


def test_rules_from_the_environment() -> None:
    settings = load_settings(
        environ={"MALLARD_GDPR_MODE": "yes", "MALLARD_STRIP_REFERRER_QUERY": "false"}
    )
    assert settings.gdpr_mode and not settings.strip_referrer_query
    assert PrivacyRules.from_settings(settings) == ALL_ON  # the preset wins


def test_no_rule_no_redactor() -> None:
    assert redactor(PrivacyRules()) is None


@pytest.mark.parametrize("rule", PrivacyRules._fields)
def test_each_rule_changes_only_its_columns(rule: str) -> None:
    event = make_event(
        timestamp=20_000 * 86_400_000_000 + 90 * 60_000_000,  # 01:30 UTC
        referrer="https://search.example/?q=secret",
        browser="Firefox",
        browser_version="125.0",
        os="Mac OS X",
        os_version="10.15",
        device_type="Laptop",
        screen_width=1280,
        country_code="DE",
        region="Bavaria",
        city="Munich",
    )
    redact = redactor(PrivacyRules(**{rule: True}))
    assert redact is not None
    redacted = redact(event)
    changed = {name for name in event._fields if getattr(event, name) != getattr(redacted, name)}
    assert changed == set(field_rules(PrivacyRules(**{rule: True})))
    assert changed  # every rule changes something in this event
    assert redacted.device_type == "Laptop" and redacted.country_code == "DE"


def city_database(path: Path) -> Path:
    """A one-network MaxMind-format city database, so region and city would be known."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    place = {"names": {"en": "Graz"}}
    record = {"country": {"iso_code": "AT"}, "subdivisions": [{"names": {"en": "Styria"}}]}
    writer.insert_network(IPSet(["192.0.2.0/24"]), {**record, "city": place})
    writer.to_db_file(str(path))
    return path


async def test_gdpr_mode_end_to_end(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(gdpr_mode=True, geoip_db=city_database(tmp_path / "city.mmdb"))
    body = {
        "d": "example.com",
        "n": "pageview",
        "u": "https://example.com/pricing?utm_source=newsletter",
        "r": "https://search.example/results?q=jane+doe+address#top",
        "w": 1280,
    }
    headers = {"User-Agent": FIREFOX_MAC, "X-Forwarded-For": "192.0.2.10"}
    response = await server.post_event(body, headers=headers)
    assert response.status_code == 202
    await server.stop()
    [event] = server.events()
    assert event["referrer"] == "https://search.example/results"
    assert event["referrer_source"] == "newsletter"
    assert event["utm_source"] == "newsletter"
    assert (event["browser"], event["browser_version"]) == ("Firefox", None)
    assert (event["os"], event["os_version"]) == ("Mac OS X", None)
    assert (event["device_type"], event["screen_width"]) == ("Laptop", None)
    assert (event["country_code"], event["region"], event["city"]) == ("AT", None, None)
    stored = event["timestamp"]
    assert (stored.minute, stored.second, stored.microsecond) == (0, 0, 0)
    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(hours=1) < stored <= now
