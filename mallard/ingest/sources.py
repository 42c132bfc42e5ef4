"""Where a visit came from: known referrer hosts and campaign sources, named.

A referrer whose host (or a parent domain of it) is listed gets the listed
name; any other referrer is named by its host without ``www.``. UTM/``ref``
values that spell a known source in lower case are normalised to the same
name, so ``utm_source=google`` and a Google referrer count together.
"""

from __future__ import annotations

import functools

KNOWN_SOURCES: dict[str, tuple[str, ...]] = {
    "Google": (
        "google.com",
        "google.co.uk",
        "google.de",
        "google.fr",
        "google.es",
        "google.it",
        "google.nl",
        "google.ca",
        "google.com.au",
        "google.co.in",
        "google.co.jp",
        "google.com.br",
        "google.pl",
        "google.ru",
        "google.com.mx",
        "google.se",
        "google.ch",
        "google.at",
        "google.be",
        "google.dk",
        "google.no",
        "google.fi",
        "google.pt",
        "google.ie",
        "google.co.nz",
        "google.com.tr",
        "google.cz",
    ),
    "Bing": ("bing.com",),
    "DuckDuckGo": ("duckduckgo.com",),
    "Yahoo!": ("yahoo.com", "search.yahoo.com"),
    "Yandex": ("yandex.ru", "yandex.com"),
    "Baidu": ("baidu.com",),
    "Ecosia": ("ecosia.org",),
    "Brave Search": ("search.brave.com",),
    "Qwant": ("qwant.com",),
    "Startpage": ("startpage.com",),
    "Kagi": ("kagi.com",),
    "Facebook": ("facebook.com", "m.facebook.com", "l.facebook.com", "lm.facebook.com", "fb.com"),
    "Instagram": ("instagram.com", "l.instagram.com"),
    "X / Twitter": ("twitter.com", "t.co", "x.com", "mobile.twitter.com"),
    "LinkedIn": ("linkedin.com", "lnkd.in"),
    "Reddit": ("reddit.com", "old.reddit.com", "out.reddit.com"),
    "GitHub": ("github.com",),
    "Hacker News": ("news.ycombinator.com",),
    "YouTube": ("youtube.com", "m.youtube.com", "youtu.be"),
    "Pinterest": ("pinterest.com",),
    "Mastodon": ("mastodon.social",),
    "Bluesky": ("bsky.app",),
    "Threads": ("threads.net",),
    "TikTok": ("tiktok.com",),
    "Wikipedia": ("wikipedia.org",),
    "Stack Overflow": ("stackoverflow.com",),
    "ChatGPT": ("chatgpt.com", "chat.openai.com"),
    "Perplexity": ("perplexity.ai",),
    "Telegram": ("t.me", "web.telegram.org"),
    "WhatsApp": ("whatsapp.com", "web.whatsapp.com"),
    "Gmail": ("mail.google.com",),
    "Outlook": ("outlook.live.com", "outlook.office.com"),
}

_SOURCE_BY_HOST = {host: name for name, hosts in KNOWN_SOURCES.items() for host in hosts}
_SOURCE_BY_LOWER_NAME = {name.lower(): name for name in KNOWN_SOURCES} | {
    "twitter": "X / Twitter",
    "x": "X / Twitter",
    "fb": "Facebook",
    "ig": "Instagram",
    "hn": "Hacker News",
    "ycombinator": "Hacker News",
}


def strip_www(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


@functools.lru_cache(maxsize=4096)
def source_for_host(host: str) -> str:
    """The name of a referrer host: a known source, else the host itself."""
    host = strip_www(host.lower().rstrip("."))
    candidate = host
    while candidate:
        name = _SOURCE_BY_HOST.get(candidate)
        if name is not None:
            return name
        _, _, candidate = candidate.partition(".")
        if "." not in candidate:  # never match on a bare TLD such as "com"
            break
    return host


@functools.lru_cache(maxsize=4096)
def source_for_campaign(value: str) -> str:
    """Normalise a ``utm_source``/``ref`` value: known names get their proper spelling."""
    cleaned = value.strip()
    return _SOURCE_BY_LOWER_NAME.get(cleaned.lower()) or _source_by_domain(cleaned) or cleaned


def _source_by_domain(value: str) -> str | None:
    if "." not in value:
        return None
    name = source_for_host(value)
    return name if name in KNOWN_SOURCES else None
