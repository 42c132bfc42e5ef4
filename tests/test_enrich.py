"""build_event: page, referrer, UTM, source and device derived from a validated event."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from mallard.ingest.enrich import build_event, device_from_width
from mallard.ingest.geo import Location
from mallard.ingest.sources import source_for_campaign, source_for_host
from mallard.ingest.useragent import UserAgentInfo
from mallard.ingest.validation import EventInput
from mallard.storage.schema import Event

DESKTOP_UA = UserAgentInfo("Chrome", "124.0", "Windows", "10", "Desktop", False)
PHONE_UA = UserAgentInfo("Mobile Safari", "17.4", "iOS", "17.4", "Mobile", False)


def build(
    url: str = "https://example.com/",
    *,
    user_agent: UserAgentInfo = DESKTOP_UA,
    **fields: Any,
) -> Event:
    event = EventInput(domain="example.com", name="pageview", url=url, **fields)
    return build_event(
        event,
        timestamp_us=1_700_000_000_000_000,
        visitor_id=-42,
        user_agent=user_agent,
        location=Location("DE", "Berlin", "Berlin"),
    )


def test_all_fields_are_carried_over() -> None:
    event = build(
        "https://example.com/checkout",
        screen_width=1920,
        props='{"plan":"pro"}',
        revenue_amount=Decimal("99.00"),
        revenue_currency="USD",
    )
    assert event == Event(
        site_id="example.com",
        visitor_id=-42,
        timestamp=1_700_000_000_000_000,
        event_name="pageview",
        pathname="/checkout",
        hostname="example.com",
        referrer=None,
        referrer_source=None,
        utm_source=None,
        utm_medium=None,
        utm_campaign=None,
        utm_content=None,
        utm_term=None,
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
        revenue_amount=Decimal("99.00"),
        revenue_currency="USD",
    )


@pytest.mark.parametrize(
    ("url", "pathname", "hostname"),
    [
        ("https://example.com/pricing?plan=pro#faq", "/pricing", "example.com"),
        ("https://www.example.com/a/b/", "/a/b/", "example.com"),
        ("https://WWW.Example.COM/Case", "/Case", "example.com"),
        ("https://Shop.Example.com:8443/x?y=1", "/x", "shop.example.com"),
        ("https://example.com", "/", "example.com"),
        ("https://example.com?q=1", "/", "example.com"),
        ("https://example.com./p", "/p", "example.com"),
        ("http://localhost:3000/dev", "/dev", "localhost"),
    ],
)
def test_pathname_and_hostname(url: str, pathname: str, hostname: str) -> None:
    event = build(url)
    assert (event.pathname, event.hostname) == (pathname, hostname)


@pytest.mark.parametrize(
    ("url", "hash_mode", "pathname"),
    [
        ("https://example.com/app#/settings", True, "/app#/settings"),
        ("https://example.com/?x=1#/a/b", True, "/#/a/b"),
        ("https://example.com/app", True, "/app"),
        ("https://example.com/app#/settings", False, "/app"),
    ],
)
def test_hash_mode_keeps_the_fragment(url: str, hash_mode: bool, pathname: str) -> None:
    assert build(url, hash_mode=hash_mode).pathname == pathname


def test_utm_parameters() -> None:
    event = build(
        "https://example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
        "&utm_content=button&utm_term=running+shoes&other=1"
    )
    assert (
        event.utm_source,
        event.utm_medium,
        event.utm_campaign,
        event.utm_content,
        event.utm_term,
    ) == ("newsletter", "email", "spring", "button", "running shoes")
    assert event.referrer_source == "newsletter"


def test_empty_utm_parameters_are_none() -> None:
    event = build("https://example.com/?utm_source=&utm_medium=")
    assert (event.utm_source, event.utm_medium, event.referrer_source) == (None, None, None)


@pytest.mark.parametrize(
    ("referrer", "source"),
    [
        ("https://www.google.com/", "Google"),
        ("https://www.google.co.uk/search?q=x", "Google"),
        ("https://news.google.com/", "Google"),
        ("https://www.bing.com/search?q=x", "Bing"),
        ("https://duckduckgo.com/", "DuckDuckGo"),
        ("https://l.facebook.com/l.php?u=x", "Facebook"),
        ("https://m.facebook.com/", "Facebook"),
        ("https://t.co/AbC123", "X / Twitter"),
        ("https://twitter.com/someone", "X / Twitter"),
        ("https://x.com/someone", "X / Twitter"),
        ("https://www.linkedin.com/feed/", "LinkedIn"),
        ("https://lnkd.in/abc", "LinkedIn"),
        ("https://www.reddit.com/r/python/", "Reddit"),
        ("https://old.reddit.com/r/python/", "Reddit"),
        ("https://github.com/owner/repo", "GitHub"),
        ("https://news.ycombinator.com/item?id=1", "Hacker News"),
        ("https://www.some-blog.org/post", "some-blog.org"),
        ("https://Blog.Example.ORG/post", "blog.example.org"),
        ("https://blog.example.com/post", "blog.example.com"),
        ("android-app://com.google.android.gm/", "com.google.android.gm"),
    ],
)
def test_referrer_source(referrer: str, source: str) -> None:
    event = build("https://example.com/", referrer=referrer)
    assert (event.referrer, event.referrer_source) == (referrer, source)


@pytest.mark.parametrize(
    ("url", "referrer"),
    [
        ("https://example.com/b", "https://example.com/a"),
        ("https://example.com/b", "https://www.example.com/a"),
        ("https://www.example.com/b", "https://EXAMPLE.com/a?x=1"),
        ("https://example.com/b", "not a url"),
    ],
)
def test_self_referral_and_junk_have_no_referrer(url: str, referrer: str) -> None:
    event = build(url, referrer=referrer)
    assert (event.referrer, event.referrer_source) == (None, None)


@pytest.mark.parametrize(
    ("query", "source"),
    [
        ("utm_source=google", "Google"),
        ("utm_source=GOOGLE", "Google"),
        ("utm_source=twitter", "X / Twitter"),
        ("utm_source=fb", "Facebook"),
        ("utm_source=news.ycombinator.com", "Hacker News"),
        ("utm_source=www.reddit.com", "Reddit"),
        ("utm_source=newsletter", "newsletter"),
        ("ref=producthunt", "producthunt"),
        ("source=github", "GitHub"),
        ("ref=github&utm_source=duckduckgo", "DuckDuckGo"),
    ],
)
def test_campaign_source_overrides_referrer(query: str, source: str) -> None:
    event = build(f"https://example.com/?{query}", referrer="https://www.bing.com/")
    assert event.referrer == "https://www.bing.com/"
    assert event.referrer_source == source


def test_utm_source_column_keeps_the_raw_value() -> None:
    event = build("https://example.com/?utm_source=google")
    assert (event.utm_source, event.referrer_source) == ("google", "Google")


def test_utm_source_counts_on_a_self_referral() -> None:
    event = build("https://example.com/?utm_source=google", referrer="https://example.com/")
    assert (event.referrer, event.referrer_source) == (None, "Google")


@pytest.mark.parametrize(
    ("width", "device"),
    [
        (None, None),
        (0, None),
        (1, "Mobile"),
        (375, "Mobile"),
        (575, "Mobile"),
        (576, "Tablet"),
        (991, "Tablet"),
        (992, "Laptop"),
        (1439, "Laptop"),
        (1440, "Desktop"),
        (3840, "Desktop"),
    ],
)
def test_device_from_width(width: int | None, device: str | None) -> None:
    assert device_from_width(width) == device


def test_device_type_prefers_width_then_user_agent() -> None:
    assert build(screen_width=390, user_agent=DESKTOP_UA).device_type == "Mobile"
    assert build(screen_width=None, user_agent=PHONE_UA).device_type == "Mobile"
    assert build(screen_width=None, user_agent=DESKTOP_UA).device_type == "Desktop"
    no_device = DESKTOP_UA._replace(device=None)
    assert build(screen_width=None, user_agent=no_device).device_type is None


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("com", "com"),
        ("co.uk", "co.uk"),
        ("example.com", "example.com"),
        ("google.evil", "google.evil"),
        ("x.com.evil.org", "x.com.evil.org"),
        ("nott.co", "nott.co"),
        ("evil-google.com", "evil-google.com"),
        ("www.google.com", "Google"),
        ("WWW.GitHub.COM.", "GitHub"),
        ("gist.github.com", "GitHub"),
        ("mail.google.com", "Gmail"),
    ],
)
def test_source_for_host_never_matches_a_bare_tld(host: str, source: str) -> None:
    assert source_for_host(host) == source


@pytest.mark.parametrize(
    ("value", "source"),
    [
        ("google", "Google"),
        (" Bing ", "Bing"),
        ("hn", "Hacker News"),
        ("x", "X / Twitter"),
        ("example.org", "example.org"),
        ("Weekly Digest", "Weekly Digest"),
    ],
)
def test_source_for_campaign(value: str, source: str) -> None:
    assert source_for_campaign(value) == source
