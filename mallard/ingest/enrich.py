"""From a validated :class:`EventInput` and request facts to a stored :class:`Event`.

Pure functions: page and referrer parsing, UTM parameters, source naming and
device classes. The IP address never reaches this module: it arrives already
turned into a visitor id and a location.
"""

from __future__ import annotations

import functools
import sys
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

from mallard.ingest.geo import Location
from mallard.ingest.sources import source_for_campaign, source_for_host, strip_www
from mallard.ingest.useragent import UserAgentInfo
from mallard.ingest.validation import EventInput
from mallard.storage.schema import Event

UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
SOURCE_PARAMS = ("utm_source", "source", "ref")


def device_from_width(width: int | None) -> str | None:
    """Device class from the screen width, with Plausible's breakpoints."""
    if not width:
        return None
    if width < 576:
        return "Mobile"
    if width < 992:
        return "Tablet"
    if width < 1440:
        return "Laptop"
    return "Desktop"


URL_CACHE_SIZE = 8192  # pages and referrers repeat: parse each once


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def _host(url: str) -> str:
    """The host of a URL, lower case and without ``www.``; empty when there is none."""
    try:
        host = urlsplit(url).hostname
    except ValueError:  # e.g. an unbalanced "[" in the authority
        return ""
    return strip_www((host or "").rstrip("."))


class Page(NamedTuple):
    hostname: str
    pathname: str
    utm: tuple[str | None, ...]  # in UTM_KEYS order
    source_param: str | None  # utm_source, source or ref, whichever comes first


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def parse_page(url: str, hash_mode: bool) -> Page:
    """What an event's URL says: host, path (no query, no fragment unless hash routing), UTM."""
    parts = urlsplit(url)
    pathname = parts.path or "/"
    if hash_mode and parts.fragment:
        pathname = f"{pathname}#{parts.fragment}"
    query = dict(parse_qsl(parts.query)) if parts.query else {}
    return Page(
        hostname=sys.intern(_host(url)),
        pathname=pathname,
        utm=tuple(query.get(key) or None for key in UTM_KEYS),
        source_param=next((query[key] for key in SOURCE_PARAMS if query.get(key)), None),
    )


def build_event(
    event: EventInput,
    *,
    timestamp_us: int,
    visitor_id: int,
    user_agent: UserAgentInfo,
    location: Location,
) -> Event:
    """Assemble the stored row; query strings and fragments leave the page path."""
    page = parse_page(event.url, event.hash_mode)
    hostname, utm = page.hostname, page.utm
    referrer = event.referrer
    referrer_host = _host(referrer) if referrer else ""
    if referrer and (not referrer_host or referrer_host == hostname):
        referrer = None  # a self-referral (or junk) is internal navigation, not a source
    if page.source_param:
        referrer_source = source_for_campaign(page.source_param)
    elif referrer:
        referrer_source = source_for_host(referrer_host)
    else:
        referrer_source = None

    return Event(
        site_id=sys.intern(event.domain),
        visitor_id=visitor_id,
        timestamp=timestamp_us,
        event_name=sys.intern(event.name) if len(event.name) <= 32 else event.name,
        pathname=page.pathname,
        hostname=hostname,
        referrer=referrer,
        referrer_source=referrer_source,
        utm_source=utm[0],
        utm_medium=utm[1],
        utm_campaign=utm[2],
        utm_content=utm[3],
        utm_term=utm[4],
        browser=user_agent.browser,
        browser_version=user_agent.browser_version,
        os=user_agent.os,
        os_version=user_agent.os_version,
        device_type=device_from_width(event.screen_width) or user_agent.device,
        screen_width=event.screen_width,
        country_code=location.country_code,
        region=location.region,
        city=location.city,
        props=event.props,
        revenue_amount=event.revenue_amount,
        revenue_currency=event.revenue_currency,
    )
