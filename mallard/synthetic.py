"""Synthetic traffic: realistic visits written straight to Parquet in the documented layout.

Traffic is simulated as *visits*. A visit belongs to a visitor (about 30% of visits
come from a visitor seen before, with the same id, device and location), starts at a
time that follows a weekly and an afternoon-peaking daily cycle, enters on a page that
depends on where it came from, and walks 1..N pages (about 45% bounce) with a drift
toward the ``/pricing -> /signup -> /checkout`` funnel, firing custom events on the way
(``signup``, ``purchase`` with revenue, ``download``, ``outbound``). Pages of a visit are
seconds to minutes apart (never 30 minutes), so visits that start late cross midnight
into the next day's partition.

Everything comes from one seeded :class:`random.Random`: the same arguments give the
same rows. For speed, page walks are simulated up front as *templates* (1024 per entry
page, with their custom events and timing) and each visit picks one and a pace; Python
then does a little work per visit and none per event. Sampling uses lookup tables
indexed by ``getrandbits``; Arrow run-end decoding and ``take`` turn visits into event
rows. Memory holds about two days of one site.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from statistics import NormalDist
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mallard.ingest.enrich import device_from_width
from mallard.ingest.sources import source_for_campaign, source_for_host
from mallard.storage.layout import EPOCH, DataLayout, batch_name, new_writer_id
from mallard.storage.schema import EVENT_SCHEMA, MICROS_PER_DAY, TIMESTAMP_TYPE

T = TypeVar("T")

RETURN_RATE = 0.3  # share of visits made by a visitor seen before
BOUNCE_RATE = 0.45  # share of single-page visits
CONTINUE_RATE = 0.6  # after the second page, the chance of one more
MAX_PAGES = 25
TEMPLATE_BITS = 10  # page walks simulated per entry page, as a power of two
MAX_GAP_US = 29 * 60 * 1_000_000  # page gaps stay below the 30-minute visit timeout
POOL_LIMIT = 100_000  # remembered visitors per site (then random ones are forgotten)
MICROS_PER_MINUTE = 60_000_000

# --- pages and the walk between them ---------------------------------------------------

BLOG_POSTS = (
    "/blog/introducing-mallard",
    "/blog/why-parquet",
    "/blog/privacy-first-analytics",
    "/blog/duckdb-for-dashboards",
    "/blog/cookie-banners-are-optional",
    "/blog/self-hosting-guide",
    "/blog/release-0-2",
    "/blog/counting-unique-visitors",
)
DOCS_PAGES = (
    "/docs/getting-started",
    "/docs/installation",
    "/docs/configuration",
    "/docs/tracking-script",
    "/docs/custom-events",
    "/docs/revenue",
    "/docs/api",
    "/docs/faq",
)
PAGES = (
    "/",
    "/pricing",
    "/signup",
    "/checkout",
    "/features",
    "/about",
    "/contact",
    "/login",
    "/changelog",
    "/blog",
    "/docs",
    *BLOG_POSTS,
    *DOCS_PAGES,
)
PAGE_INDEX = {page: index for index, page in enumerate(PAGES)}
# A group key spreads its weight over its pages, the first ones most (Zipf).
GROUPS = {"/blog/*": BLOG_POSTS, "/docs/*": DOCS_PAGES}

BLOG_NEXT = {"/blog/*": 30, "/blog": 15, "/": 15, "/pricing": 20, "/features": 10, "/docs/*": 10}
DOCS_NEXT = {"/docs/*": 60, "/docs": 10, "/pricing": 15, "/": 5, "/signup": 10}
NEXT_PAGE: dict[str, dict[str, float]] = {
    "/": {
        "/pricing": 25, "/features": 18, "/blog": 8, "/blog/*": 10, "/docs": 8, "/docs/*": 8,
        "/about": 5, "/login": 8, "/changelog": 3, "/contact": 2,
    },
    "/features": {
        "/pricing": 35, "/docs/*": 15, "/": 15, "/signup": 10, "/blog/*": 10, "/about": 5,
    },
    "/pricing": {
        "/signup": 35, "/features": 12, "/": 10, "/docs/*": 15, "/contact": 8, "/blog/*": 5,
        "/login": 5,
    },
    "/signup": {"/checkout": 45, "/pricing": 20, "/docs/*": 20, "/": 10, "/login": 5},
    "/checkout": {"/docs/getting-started": 45, "/": 20, "/docs/*": 20, "/pricing": 10,
                  "/contact": 5},
    "/login": {"/": 40, "/docs/*": 30, "/pricing": 15, "/changelog": 15},
    "/about": {"/contact": 25, "/": 25, "/blog": 20, "/pricing": 20, "/features": 10},
    "/contact": {"/": 50, "/pricing": 30, "/about": 20},
    "/changelog": {"/blog/*": 30, "/docs/*": 30, "/": 20, "/pricing": 20},
    "/blog": {"/blog/*": 80, "/": 10, "/pricing": 10},
    "/docs": {"/docs/*": 85, "/": 5, "/pricing": 10},
    **dict.fromkeys(BLOG_POSTS, BLOG_NEXT),
    **dict.fromkeys(DOCS_PAGES, DOCS_NEXT),
}  # fmt: skip

# --- where visits come from ------------------------------------------------------------

DIRECT_ENTRY = {"/": 50, "/pricing": 10, "/login": 12, "/docs/*": 10, "/blog/*": 8,
                "/features": 5, "/changelog": 5}  # fmt: skip
SEARCH_ENTRY = {"/": 20, "/docs/*": 30, "/blog/*": 30, "/pricing": 10, "/features": 10}
SOCIAL_ENTRY = {"/blog/*": 70, "/": 20, "/pricing": 5, "/docs/*": 5}
CODE_ENTRY = {"/": 30, "/docs/*": 60, "/pricing": 10}


class Source(NamedTuple):
    """Where a visit comes from and which pages it lands on."""

    referrer: str | None
    entry: dict[str, float]
    weight: float  # for new visitors
    returning_weight: float  # for returning visitors, who mostly come back directly
    utm: tuple[str | None, ...] = (None,) * 5  # source, medium, campaign, content, term


SOURCES = (
    Source(None, DIRECT_ENTRY, 36, 70),
    Source("https://www.google.com/", SEARCH_ENTRY, 24, 12),
    Source("https://www.google.de/", SEARCH_ENTRY, 3, 1),
    Source("https://www.google.co.uk/", SEARCH_ENTRY, 2, 1),
    Source("https://www.bing.com/", SEARCH_ENTRY, 4, 2),
    Source("https://duckduckgo.com/", SEARCH_ENTRY, 3, 2),
    Source("https://t.co/", SOCIAL_ENTRY, 4, 1),
    Source("https://www.reddit.com/r/selfhosted/", SOCIAL_ENTRY, 3, 1),
    Source("https://github.com/mallard-analytics/mallard", CODE_ENTRY, 4, 3),
    Source("https://news.ycombinator.com/", SOCIAL_ENTRY, 3, 1),
    Source("https://www.linkedin.com/", SOCIAL_ENTRY, 1, 0.5),
    Source("https://chatgpt.com/", SEARCH_ENTRY, 1, 0.5),
    Source("https://dev.to/", SOCIAL_ENTRY, 1, 0.5),
    Source(
        None,
        {"/blog/release-0-2": 60, "/pricing": 40},
        3,
        3,
        ("newsletter", "email", "spring_launch", "header_link", None),
    ),
    Source(
        "https://t.co/",
        {"/blog/introducing-mallard": 70, "/": 30},
        1.5,
        0.5,
        ("twitter", "social", "launch_week", None, None),
    ),
    Source(
        "https://www.google.com/",
        {"/pricing": 60, "/": 40},
        2,
        0.5,
        ("google", "cpc", "brand_search", "ad_variant_b", "privacy analytics"),
    ),
    Source(
        "https://www.reddit.com/",
        {"/": 50, "/features": 50},
        1,
        0.2,
        ("reddit", "cpc", "selfhosted_promo", None, None),
    ),
)


def referrer_source(source: Source) -> str | None:
    """The source name the ingestion pipeline would store for this visit origin."""
    if source.utm[0]:
        return source_for_campaign(source.utm[0])
    if source.referrer:
        return source_for_host(urlsplit(source.referrer).hostname or "")
    return None


# --- who visits: devices and places ----------------------------------------------------


class Family(NamedTuple):
    """A browser on an operating system, with the versions and screens seen with it."""

    browser: str
    browser_versions: tuple[str, ...]  # newest (most common) first
    os: str
    os_versions: tuple[str | None, ...]
    widths: tuple[int, ...]  # most common first; the device class follows from them
    weight: float


# Names and version formats as ``ua-parser`` (and so the ingestion pipeline) gives them.
FAMILIES = (
    Family("Chrome", ("126.0", "125.0", "124.0", "123.0"), "Windows", ("10",),
           (1920, 1536, 1366, 2560, 1280), 30),
    Family("Edge", ("126.0", "125.0", "124.0"), "Windows", ("10",), (1920, 1536, 1366), 6),
    Family("Firefox", ("128.0", "127.0", "115.0"), "Windows", ("10",), (1920, 1366, 2560), 4),
    Family("Chrome", ("126.0", "125.0", "124.0"), "Mac OS X", ("10.15",),
           (1440, 1512, 1728, 1680), 9),
    Family("Safari", ("17.5", "17.4", "18.0", "16.6"), "Mac OS X", ("10.15",),
           (1440, 1512, 1728, 1280), 7),
    Family("Firefox", ("128.0", "127.0"), "Mac OS X", ("10.15",), (1440, 1512), 1.5),
    Family("Firefox", ("128.0", "115.0"), "Linux", (None,), (1920, 2560, 1366), 1.5),
    Family("Chrome", ("126.0", "125.0"), "Linux", (None,), (1920, 2560), 1.5),
    Family("Firefox", ("128.0",), "Ubuntu", (None,), (1920, 1366), 1),
    Family("Chrome", ("126.0", "125.0"), "Chrome OS", ("14541.0", "15604.0"), (1366, 1280), 1),
    Family("Mobile Safari", ("17.5", "17.4", "18.0", "16.6"), "iOS", ("17.5", "17.4", "18.0",
           "16.6"), (390, 393, 430, 375, 414), 16),
    Family("Chrome Mobile iOS", ("126.0", "125.0"), "iOS", ("17.5", "17.4"), (390, 393, 430),
           1.5),
    Family("Chrome Mobile", ("126.0", "125.0", "124.0"), "Android", ("14", "13", "12"),
           (412, 360, 384, 393), 14),
    Family("Samsung Internet", ("25.0", "24.0"), "Android", ("14", "13"), (360, 384, 412), 2.5),
    Family("Firefox Mobile", ("128.0",), "Android", ("14", "13"), (412, 360), 0.8),
    Family("Mobile Safari", ("17.5", "17.4"), "iOS", ("17.5", "17.4"), (810, 820, 768, 834), 3),
)  # fmt: skip

EURO_COUNTRIES = frozenset({"DE", "FR", "NL", "ES", "IT", "AT", "BE"})
# (country, region, city, weight); region and city as a City database names them.
LOCATIONS = (
    ("US", "California", "San Francisco", 8), ("US", "New York", "New York", 7),
    ("US", "Texas", "Austin", 4), ("US", "Washington", "Seattle", 3), ("US", None, None, 6),
    ("DE", "Berlin", "Berlin", 5), ("DE", "Bavaria", "Munich", 3), ("DE", None, None, 3),
    ("GB", "England", "London", 6), ("GB", "Scotland", "Edinburgh", 1.5),
    ("FR", "Île-de-France", "Paris", 5), ("FR", "Auvergne-Rhône-Alpes", "Lyon", 1.5),
    ("IN", "Karnataka", "Bengaluru", 4), ("IN", "Maharashtra", "Mumbai", 3),
    ("BR", "São Paulo", "São Paulo", 3), ("BR", "Rio de Janeiro", "Rio de Janeiro", 1.5),
    ("CA", "Ontario", "Toronto", 3), ("CA", "British Columbia", "Vancouver", 1.5),
    ("NL", "North Holland", "Amsterdam", 3), ("ES", "Madrid", "Madrid", 2),
    ("IT", "Lombardy", "Milan", 2), ("PL", "Mazovia", "Warsaw", 2),
    ("SE", "Stockholm", "Stockholm", 1.5), ("CH", "Zurich", "Zurich", 1.5),
    ("AT", "Vienna", "Vienna", 1), ("BE", "Brussels Capital", "Brussels", 1),
    ("JP", "Tokyo", "Tokyo", 2.5), ("AU", "New South Wales", "Sydney", 2),
    ("SG", None, "Singapore", 1), (None, None, None, 1),
)  # fmt: skip

# --- custom events ---------------------------------------------------------------------

PLANS = {"starter": 5, "pro": 3, "team": 1}
MONTHLY_PRICE = {"USD": {"starter": 9, "pro": 29, "team": 99}, "EUR": {"starter": 9, "pro": 27,
                 "team": 89}}  # fmt: skip
VAT = {"USD": Decimal(1), "EUR": Decimal("1.19")}
CENT = Decimal("0.01")


class Kind(NamedTuple):
    """What an event is, besides where and when: its name, props and revenue."""

    event_name: str
    props: str | None = None
    revenue_amount: Decimal | None = None
    revenue_currency: str | None = None


PAGEVIEW = 0  # index of the page view in the kinds table


class CustomEvent(NamedTuple):
    """The custom event a page view may be followed by."""

    rate: float  # chance per view of the page
    kinds: list[int]  # sampler of kinds (prices in USD)


def _props(**values: str) -> str:
    return json.dumps(values)


def _purchases(currency: str) -> list[tuple[Kind, float]]:
    kinds = []
    for (plan, weight), (billing, months) in itertools.product(
        PLANS.items(), (("monthly", 1), ("annual", 10))
    ):
        amount = (MONTHLY_PRICE[currency][plan] * months * VAT[currency]).quantize(CENT)
        kind = Kind("purchase", _props(plan=plan, billing=billing), amount, currency)
        kinds.append((kind, weight * (3 if months == 1 else 1)))
    return kinds


# --- sampling tables -------------------------------------------------------------------


def _table(weighted: Sequence[tuple[T, float]], bits: int = 12) -> list[T]:
    """``2**bits`` slots filled in proportion to the weights: ``table[getrandbits(bits)]``."""
    size = 1 << bits
    cumulative = list(itertools.accumulate(weight for _, weight in weighted))
    total = cumulative[-1]
    return [weighted[bisect.bisect(cumulative, (i + 0.5) * total / size)][0] for i in range(size)]


def _zipf(items: Sequence[T], weight: float = 1.0) -> list[tuple[T, float]]:
    """``weight`` shared among ``items`` as 1, 1/2, 1/3, ...: the first ones most."""
    shares = [1 / (rank + 1) for rank in range(len(items))]
    return [(item, weight * share / sum(shares)) for item, share in zip(items, shares, strict=True)]


def _page_table(weights: dict[str, float]) -> list[int]:
    """A sampler of page indices; group keys (``/blog/*``) spread over their pages."""
    expanded: list[tuple[int, float]] = []
    for key, weight in weights.items():
        pages = GROUPS.get(key)
        if pages is None:
            expanded.append((PAGE_INDEX[key], weight))
        else:
            expanded += [(PAGE_INDEX[page], share) for page, share in _zipf(pages, weight)]
    return _table(expanded)


def _profiles() -> tuple[pa.Table, list[int]]:
    """Every (browser, version, os, version, device, width) combination and a sampler."""
    rows: list[tuple[str, str, str, str | None, str | None, int]] = []
    weights: list[tuple[int, float]] = []
    for family in FAMILIES:
        for (version, w1), (os_version, w2), (width, w3) in itertools.product(
            _zipf(family.browser_versions), _zipf(family.os_versions), _zipf(family.widths)
        ):
            weights.append((len(rows), family.weight * w1 * w2 * w3))
            device = device_from_width(width)
            rows.append((family.browser, version, family.os, os_version, device, width))
    names = ("browser", "browser_version", "os", "os_version", "device_type", "screen_width")
    columns = [
        pa.array(column, EVENT_SCHEMA.field(name).type)
        for name, column in zip(names, zip(*rows, strict=True), strict=True)
    ]
    return pa.Table.from_arrays(columns, names=names), _table(weights, bits=14)


def _minute_weight(minute: int) -> float:
    """Visits per minute of the UTC day: a night floor, a European morning, a US afternoon."""
    hour = minute / 60

    def bump(center: float, width: float) -> float:
        distance = min(abs(hour - center), 24 - abs(hour - center))
        return math.exp(-(distance**2) / (2 * width**2))

    return 0.25 + bump(15, 4) + 0.35 * bump(9, 2.5)


def _gap_us(quantile: float) -> int:
    """Time between two pages before a visit's pace: log-normal, median 40 s, 2 s .. 29 min."""
    seconds = math.exp(math.log(40) + 1.1 * NormalDist().inv_cdf(quantile))
    return min(max(int(seconds * 1_000_000), 2_000_000), MAX_GAP_US - 1_000_000)


def _visit_lengths() -> list[int]:
    """A sampler of page views per visit: a share of bounces, then a geometric tail."""
    weights = [(1, BOUNCE_RATE)] + [
        (pages, (1 - BOUNCE_RATE) * (1 - CONTINUE_RATE) * CONTINUE_RATE ** (pages - 2))
        for pages in range(2, MAX_PAGES + 1)
    ]
    return _table(weights)


def _custom_events() -> tuple[list[Kind], list[CustomEvent | None], list[int]]:
    """The kinds of events (page views first), the custom event each page may fire, and
    for each kind the kind a visitor paying in euros gets instead."""
    kinds = [Kind("pageview")]
    events: list[CustomEvent | None] = [None] * len(PAGES)
    in_euros = [PAGEVIEW]

    def register(weighted: list[tuple[Kind, float]]) -> int:
        kinds.extend(kind for kind, _ in weighted)
        in_euros.extend(range(len(in_euros), len(kinds)))
        return len(kinds) - len(weighted)

    def add(
        pages: Sequence[str],
        rate: float,
        usd: list[tuple[Kind, float]],
        eur: list[tuple[Kind, float]] | None = None,
    ) -> None:
        first = register(usd)
        if eur:  # the same choices, in the same order, priced in euros
            in_euros[first : first + len(usd)] = range(register(eur), len(kinds))
        sampler = _table([(first + i, weight) for i, (_, weight) in enumerate(usd)])
        for page in pages:
            events[PAGE_INDEX[page]] = CustomEvent(rate, sampler)

    add(["/signup"], 0.35, [(Kind("signup", _props(plan=p)), w) for p, w in PLANS.items()])
    add(["/checkout"], 0.4, _purchases("USD"), _purchases("EUR"))
    files = ("mallard-0.2.0.tar.gz", "mallard-0.2.0-py3-none-any.whl")
    add(DOCS_PAGES, 0.06, _zipf([Kind("download", _props(file=file)) for file in files]))
    urls = (
        "https://github.com/mallard-analytics/mallard",
        "https://duckdb.org/",
        "https://parquet.apache.org/",
    )
    add(BLOG_POSTS, 0.05, _zipf([Kind("outbound", _props(url=url)) for url in urls]))
    return kinds, events, in_euros


class _Templates(NamedTuple):
    """Page walks, ``2**TEMPLATE_BITS`` per entry page, flattened: one row per event."""

    offsets: pa.Array  # µs since the visit's start
    pages: pa.Array
    kinds: pa.Array
    first: list[int]  # per template: its first row
    length: list[int]  # events
    duration: list[int]  # µs from the first to the last event


def _templates(
    rng: random.Random, entry_pages: set[int], custom_events: list[CustomEvent | None]
) -> _Templates:
    """Walk the site from each entry page: the page flow, custom events and timing."""
    bits = rng.getrandbits
    next_page = [_page_table(NEXT_PAGE[page]) for page in PAGES]
    gap = [_gap_us((i + 0.5) / 4096) for i in range(4096)]
    lengths = _visit_lengths()
    offsets: list[int] = []
    pages: list[int] = []
    kinds: list[int] = []
    first: list[int] = []
    length: list[int] = []
    duration: list[int] = []
    for entry in sorted(entry_pages):
        for _ in range(1 << TEMPLATE_BITS):
            first.append(len(offsets))
            t, page = 0, entry
            for step in range(lengths[bits(12)]):
                if step:
                    t += gap[bits(12)] + bits(20)  # + up to a second
                    page = next_page[page][bits(12)]
                offsets.append(t)
                pages.append(page)
                kinds.append(PAGEVIEW)
                custom = custom_events[page]
                if custom is not None and rng.random() < custom.rate:
                    t += 500_000 + bits(24)  # 0.5 .. 17 s after the page view
                    offsets.append(t)
                    pages.append(page)
                    kinds.append(custom.kinds[bits(12)])
            length.append(len(offsets) - first[-1])
            duration.append(t)
    return _Templates(
        pa.array(offsets, pa.int64()),
        pa.array(pages, pa.int16()),
        pa.array(kinds, pa.int16()),
        first,
        length,
        duration,
    )


class _Tables:
    """All sampling tables and the Arrow dictionaries that ``take`` expands, built once."""

    def __init__(self, rng: random.Random) -> None:
        self.profiles, self.profile_sampler = _profiles()
        self.locations = pa.table(
            {
                name: pa.array([row[i] for row in LOCATIONS], pa.string())
                for i, name in enumerate(("country_code", "region", "city"))
            }
        )
        self.location_sampler = _table([(i, row[3]) for i, row in enumerate(LOCATIONS)], bits=14)
        self.sources = pa.table(
            {
                "referrer": pa.array([s.referrer for s in SOURCES], pa.string()),
                "referrer_source": pa.array([referrer_source(s) for s in SOURCES], pa.string()),
                **{
                    f"utm_{part}": pa.array([s.utm[i] for s in SOURCES], pa.string())
                    for i, part in enumerate(("source", "medium", "campaign", "content", "term"))
                },
            }
        )
        self.new_source = _table([(i, s.weight) for i, s in enumerate(SOURCES)])
        self.returning_source = _table([(i, s.returning_weight) for i, s in enumerate(SOURCES)])
        kinds, custom_events, in_euros = _custom_events()
        entries = [_page_table(s.entry) for s in SOURCES]
        entry_pages = set().union(*entries)
        self.templates = _templates(rng, entry_pages, custom_events)
        base = dict(zip(sorted(entry_pages), itertools.count(0, 1 << TEMPLATE_BITS)))
        # per source, a sampler of the first template of an entry page
        self.entry_templates = [[base[page] for page in pages] for pages in entries]
        self.start_minute = _table(
            [(m * MICROS_PER_MINUTE, _minute_weight(m)) for m in range(1440)], bits=14
        )
        self.kinds = pa.Table.from_pylist(
            [kind._asdict() for kind in kinds],
            schema=pa.schema([EVENT_SCHEMA.field(name) for name in Kind._fields]),
        )
        self.in_euros = pa.array(in_euros, pa.int16())
        self.euro = pa.array([row[0] in EURO_COUNTRIES for row in LOCATIONS])
        self.pages = pa.array(PAGES, pa.string())

    def expand(self, site_id: str, index: pa.Table) -> pa.Table:
        """Turn an index table (see :func:`_index_table`) into rows of ``EVENT_SCHEMA``."""
        site = pa.repeat(pa.scalar(site_id, pa.string()), index.num_rows)
        columns = {
            "site_id": site,
            "hostname": site,
            "visitor_id": index["visitor_id"],
            "timestamp": index["timestamp"].cast(TIMESTAMP_TYPE),
            "pathname": self.pages.take(index["page"]),
        }
        for lookup, key in (
            (self.profiles, "profile"),
            (self.locations, "location"),
            (self.sources, "source"),
            (self.kinds, "kind"),
        ):
            expanded = lookup.take(index[key])
            columns.update(zip(expanded.column_names, expanded.columns, strict=True))
        return pa.table([columns[name] for name in EVENT_SCHEMA.names], schema=EVENT_SCHEMA)


# --- the generator ---------------------------------------------------------------------

# Dictionary pages for the repetitive columns only, and min/max statistics only where a
# query can prune with them: twice as fast to write as the defaults, and smaller.
WRITE_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": [f.name for f in EVENT_SCHEMA if f.name not in ("visitor_id", "timestamp")],
    "write_statistics": ["timestamp", "event_name", "pathname"],
}


@dataclass(frozen=True)
class GenerationReport:
    """What :func:`generate` wrote and how long it took."""

    events: int
    files: int
    bytes: int  # size of the files written
    seconds: float
    sites: int
    days: int


class _Site:
    """One site's returning visitors and the events its last day pushed past midnight."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pool: list[tuple[int, int, int]] = []  # (visitor id, profile, location)
        self.carry: pa.Table | None = None


def _day_weights(rng: random.Random, first_day: int, days: int) -> list[float]:
    """Relative traffic per day: weekday cycle, slow growth, noise, rare viral spikes."""
    weekday = (1.0, 1.05, 1.05, 1.0, 0.9, 0.6, 0.55)  # Monday first
    weights = []
    for offset in range(days):
        day = first_day + offset
        weight = weekday[(EPOCH + dt.timedelta(days=day)).weekday()]
        weight *= (1 + 0.5 * offset / days) * rng.uniform(0.9, 1.1)
        if rng.random() < 0.03:
            weight *= rng.uniform(2, 4)
        weights.append(weight)
    return weights


def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` that sum exactly to it."""
    scale = total / sum(weights)
    exact = [weight * scale for weight in weights]
    shares = [int(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: shares[i] - exact[i])
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


# One visit: visitor id, profile, location, source, template row minus the visit's first
# event row (rows counted from 1), start time (µs), pace (the visit takes pace/256 of its
# template's time) and one past its last event row.
Visit = tuple[int, int, int, int, int, int, int, int]


def _simulate(
    tables: _Tables,
    rng: random.Random,
    pool: list[tuple[int, int, int]],
    day_start: int,
    budget: int,
    limit: int,
    tick: Callable[[int], None],
) -> list[Visit]:
    """Visits starting on the day at ``day_start`` with exactly ``budget`` events in all.

    The hot loop of the generator, hence the local aliases. No event reaches
    ``limit``: a visit that would is moved earlier as a whole; events may run past
    the day's end. The last visit is cut short to fit. ``tick(n)`` reports progress.
    """
    bits, uniform = rng.getrandbits, rng.random
    profile_sampler, location_sampler = tables.profile_sampler, tables.location_sampler
    new_source, returning_source = tables.new_source, tables.returning_source
    entry_templates, start_minute = tables.entry_templates, tables.start_minute
    first, length, duration = (
        tables.templates.first,
        tables.templates.length,
        tables.templates.duration,
    )
    visits: list[Visit] = []
    add = visits.append
    tick_every = max(1, budget // 200)
    next_tick = tick_every
    rows = 0
    while rows < budget:
        if rows >= next_tick:
            tick(rows)
            next_tick += tick_every
        if pool and uniform() < RETURN_RATE:
            visitor_id, profile, location = pool[int(uniform() * len(pool))]
            source = returning_source[bits(12)]
        else:
            visitor_id = bits(64) - (1 << 63)  # a signed int64
            profile = profile_sampler[bits(14)]
            location = location_sampler[bits(14)]
            if len(pool) < POOL_LIMIT:
                pool.append((visitor_id, profile, location))
            else:  # forget a random visitor
                pool[int(uniform() * POOL_LIMIT)] = (visitor_id, profile, location)
            source = new_source[bits(12)]
        template = entry_templates[source][bits(12)] + bits(TEMPLATE_BITS)
        start = day_start + start_minute[bits(14)] + bits(26)  # + up to 67 s
        overflow = start + duration[template] - limit
        if overflow >= 0:
            start -= overflow + 1 + bits(28)
        pace = 128 + bits(7)
        add((visitor_id, profile, location, source, first[template] - rows - 1, start, pace,
             rows := rows + length[template]))  # fmt: skip
    if rows > budget:
        visits[-1] = (*visits[-1][:-1], budget)
    tick(budget)
    return visits


def _index_table(tables: _Tables, visits: list[Visit]) -> pa.Table:
    """One row per event with integer columns: time, visitor, and indices into lookups."""
    visitor_ids, profiles, locations, sources, shifts, starts, paces, ends = zip(
        *visits, strict=True
    )
    run_ends = pa.array(ends, pa.int32())

    def per_event(values: Sequence[int], type_: pa.DataType) -> pa.Array:
        encoded = pa.RunEndEncodedArray.from_arrays(run_ends, pa.array(values, type_))
        return pc.run_end_decode(encoded)

    rows = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), ends[-1]))  # 1, 2, ...
    template_rows = pc.add(rows, per_event(shifts, pa.int64()))
    offsets = pc.divide(
        pc.multiply(tables.templates.offsets.take(template_rows), per_event(paces, pa.int64())),
        256,
    )
    location = per_event(locations, pa.int16())
    kinds = tables.templates.kinds.take(template_rows)
    return pa.table(
        {
            "timestamp": pc.add(per_event(starts, pa.int64()), offsets),
            "visitor_id": per_event(visitor_ids, pa.int64()),
            "profile": per_event(profiles, pa.int16()),
            "location": location,
            "source": per_event(sources, pa.int16()),
            "page": tables.templates.pages.take(template_rows),
            "kind": pc.if_else(tables.euro.take(location), tables.in_euros.take(kinds), kinds),
        }
    )


def _split(site: _Site, index: pa.Table | None, day: int) -> pa.Table | None:
    """The site's events of ``day`` in time order, with those the day before pushed into it.

    Events past the day's end are kept in ``site.carry`` for the next day.
    """
    parts = [part for part in (site.carry, index) if part is not None]
    if not parts:
        return None
    index = pa.concat_tables(parts).sort_by("timestamp").combine_chunks()
    today = pc.sum(pc.less(index["timestamp"], (day + 1) * MICROS_PER_DAY)).as_py() or 0
    site.carry = index.slice(today) if today < index.num_rows else None
    return index.slice(0, today) if today else None


def _write(table: pa.Table, destination: Path, staging: Path) -> int:
    """Write ``table`` aside and rename it into place: readers never see a partial file."""
    pq.write_table(table, staging, **WRITE_OPTIONS)
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, destination)
    return destination.stat().st_size


def generate(
    data_dir: Path | str,
    *,
    events: int,
    days: int,
    sites: list[str],
    end: dt.date | None = None,
    seed: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationReport:
    """Write ``events`` synthetic events for ``sites`` over the ``days`` UTC days up to ``end``.

    One Parquet file per site and day, in ``data_dir``'s documented layout. ``end``
    defaults to today (UTC). The same arguments (``seed`` included) give the same rows.
    ``progress(done, total)`` is called at least every 2% of the events and once at the
    end with ``done == total``. A worker thread writes one day while the next is
    simulated; at most two days are in memory.
    """
    if events < 0 or days < 1 or not sites:
        raise ValueError("need events >= 0, days >= 1 and at least one site")
    started = time.perf_counter()
    layout = DataLayout(Path(data_dir))
    layout.create()
    rng = random.Random(seed)
    tables = _Tables(rng)
    end = end or dt.datetime.now(dt.UTC).date()
    first_day = (end - EPOCH).days - days + 1
    site_weights = [1 / (rank + 1) ** 0.8 for rank in range(len(sites))]
    day_weights = _day_weights(rng, first_day, days)
    budgets = iter(_allocate(events, [d * s for d in day_weights for s in site_weights]))
    state = [_Site(name) for name in sites]
    writer_id = new_writer_id()
    done = files = size = 0
    report_every = max(1, events // 100)
    next_report = report_every

    def tick(produced: int) -> None:
        nonlocal next_report
        if progress is not None and next_report <= done + produced < events:
            progress(done + produced, events)
            next_report = done + produced + report_every

    def collect(future: Future[int] | None) -> None:
        nonlocal files, size
        if future is not None:
            files += 1
            size += future.result()

    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future[int] | None = None
        for day, site in itertools.product(range(first_day, first_day + days), state):
            budget = next(budgets)
            limit = (day + (1 if day == first_day + days - 1 else 2)) * MICROS_PER_DAY
            simulated = _simulate(tables, rng, site.pool, day * MICROS_PER_DAY, budget, limit, tick)
            index = _split(site, _index_table(tables, simulated) if budget else None, day)
            done += budget
            if index is None:
                continue
            table = tables.expand(site.name, index)
            name = batch_name(writer_id, day - first_day)  # one name per day, unique per site
            collect(pending)
            pending = writer.submit(
                _write,
                table,
                layout.partition(site.name, day) / f"{name}.parquet",
                layout.tmp / f"{name}.parquet.tmp",
            )
        collect(pending)
    if progress is not None:
        progress(events, events)
    return GenerationReport(
        events=events,
        files=files,
        bytes=size,
        seconds=time.perf_counter() - started,
        sites=len(sites),
        days=days,
    )
