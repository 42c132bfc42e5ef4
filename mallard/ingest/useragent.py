"""User-Agent analysis: browser, OS, device class, and whether it is a bot.

Parsing uses ``ua-parser`` (the maintained uap-core regexes, with the native
accelerator when installed) and bot detection uses ``crawlerdetect``'s crawler
database. Both are slow per call (tens to hundreds of microseconds) but user
agents repeat, so results are cached.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import ua_parser
from crawlerdetect import CrawlerDetect

# Generic HTTP client libraries are in crawler databases, yet they are exactly
# what server-side callers use to record events (the spec's own curl example).
# A request whose only "bot" signal is one of these is kept.
SERVER_SIDE_CLIENTS = re.compile(
    r"^(curl|wget|python-requests|python-httpx|python-urllib|aiohttp|go-http-client|"
    r"node-fetch|undici|axios|okhttp|java|apache-httpclient|guzzlehttp|ruby|faraday|"
    r"libwww-perl|php|dart|reqwest|rest-client|http\.rb|httpie)",
    re.IGNORECASE,
)

_crawlers = CrawlerDetect()
ANALYSED_LENGTH = 512
START_UP_AGENT = "Mallard start-up"  # no crawler, and not all of it in the exclusions


class UserAgentInfo(NamedTuple):
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device: str | None  # "Mobile", "Tablet" or "Desktop", from the UA alone
    is_bot: bool


def _version(major: str | None, minor: str | None) -> str | None:
    if not major:
        return None
    return f"{major}.{minor}" if minor else major


def _device_class(user_agent: str, os_family: str | None, device_family: str | None) -> str | None:
    if not user_agent or os_family is None:  # not a browser on a known system
        return None
    if device_family == "iPad" or "Tablet" in user_agent:
        return "Tablet"
    if os_family == "Android":
        return "Mobile" if "Mobile" in user_agent else "Tablet"
    if device_family == "iPhone" or os_family in ("iOS", "Windows Phone") or "Mobi" in user_agent:
        return "Mobile"
    return "Desktop"


def is_bot(user_agent: str) -> bool:
    """True for crawlers, spiders, headless browsers and monitors, not HTTP libraries."""
    if not _crawlers.isCrawler(user_agent):
        return False
    return not SERVER_SIDE_CLIENTS.match(user_agent)


def load_parsers() -> None:
    """Compile the parser's and the crawler list's regexes now (about 150 ms), not
    at the first :func:`analyse`, which runs on the event loop and would hold every
    request back meanwhile."""
    ua_parser.parse(START_UP_AGENT)  # the first call builds the library's global parser
    is_bot(START_UP_AGENT)  # and the first check compiles the crawler list


def analyse(user_agent: str) -> UserAgentInfo:
    """Everything Mallard derives from a User-Agent header, from its first
    ``ANALYSED_LENGTH`` characters: bot detection takes time that grows with the
    square of the length, on the event loop (a browser's is a few hundred)."""
    return _analyse(user_agent[:ANALYSED_LENGTH])


@functools.lru_cache(maxsize=20_000)
def _analyse(user_agent: str) -> UserAgentInfo:
    result = ua_parser.parse(user_agent)
    browser = result.user_agent
    os = result.os
    device = result.device
    os_family = os.family if os and os.family != "Other" else None
    return UserAgentInfo(
        browser=browser.family if browser and browser.family != "Other" else None,
        browser_version=_version(browser.major, browser.minor) if browser else None,
        os=os_family,
        os_version=_version(os.major, os.minor) if os else None,
        device=_device_class(user_agent, os_family, device.family if device else None),
        is_bot=is_bot(user_agent),
    )
