"""The ingestion decision for one request, after the body has been read.

Order of checks, so that invalid floods never spend a site's rate budget:
validation (400/422, done by the caller while parsing), Origin (403), bot
filter (silently dropped), rate limit (429), queue space (503). Every event is
counted once: accepted, or dropped with its reason (metrics and drop report).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

import trio

from mallard.config import Settings
from mallard.ingest.client import client_ip
from mallard.ingest.dropped import BACK_PRESSURE, BOT, INVALID, ORIGIN, RATE_LIMITED
from mallard.ingest.enrich import build_event
from mallard.ingest.geo import GeoLookup, Location
from mallard.ingest.privacy import PrivacyRules, redactor
from mallard.ingest.ratelimit import RateLimiter
from mallard.ingest.useragent import UserAgentInfo, analyse
from mallard.ingest.validation import EventInput, InvalidEvent
from mallard.ingest.visitor import VisitorIds
from mallard.storage.schema import Event
from mallard.storage.writer import EventWriter

RETRY_AFTER = 1  # seconds, for 503 answers
MAX_RETRY_AFTER = 86_400  # seconds: a tiny rate limit's wait, told as at most a day


class Refused(InvalidEvent):
    """A valid event the server will not take now; may carry a Retry-After."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class Outcome(Enum):
    STORED = "stored"
    BOT = "bot"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What ingestion needs from the HTTP request besides the event itself."""

    peer: str | None
    user_agent: str = ""
    origin: str | None = None
    forwarded_for: str | None = None
    real_ip: str | None = None


@dataclass(frozen=True, slots=True)
class Client:
    """Who sent the request, as far as enrichment needs to know."""

    ip: str
    user_agent: str
    analysis: UserAgentInfo
    location: Location


def origin_allowed(origin: str | None, site_ids: tuple[str, ...]) -> bool:
    """No allowlist, or no Origin (a server-side call), or the Origin's host is listed.

    A listed ``host:port`` site id matches only that port; a bare host any port.
    """
    if not site_ids or origin is None:
        return True
    try:
        parts = urlsplit(origin.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return False
    if host is None:
        return False
    return host in site_ids or (port is not None and f"{host}:{port}" in site_ids)


class Ingestor:
    """Turns validated events into stored rows on the writer's channel."""

    def __init__(
        self,
        settings: Settings,
        events: trio.MemorySendChannel[Event],
        *,
        writer: EventWriter,
        visitors: VisitorIds,
        limiter: RateLimiter,
        geo: GeoLookup,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._settings = settings
        self._events = events
        self._writer = writer
        self._sent = 0  # events enqueued: the writer numbers them in the same order
        self._visitors = visitors
        self._limiter = limiter
        self._geo = geo
        self._clock = clock
        self._redact = redactor(PrivacyRules.from_settings(settings))
        self._metrics = writer.metrics
        self._accepted = writer.metrics.accepted
        self._drops = writer.drops

    async def ingest(self, event: EventInput, request: RequestFacts) -> Outcome:
        """Queue the event for storage, or raise :class:`Refused`.

        With the write-ahead log, returns only once the event is durable.
        """
        client = self._admit(request, (event.domain,))
        if client is None:
            return Outcome.BOT
        sequence = self._enqueue(event, client, self._clock())
        if self._writer.durable and not await self._writer.wait_durable(sequence):
            self._dropped(BACK_PRESSURE, event.domain)
            raise _busy()
        self._accepted.inc()
        return Outcome.STORED

    async def ingest_batch(
        self, events: list[EventInput | InvalidEvent], request: RequestFacts
    ) -> list[InvalidEvent | None]:
        """Several events of one request: the outcome of each, None where accepted.

        Request-wide checks (Origin, bots) apply to all; the rate limit and the
        queue to each event in order. Returns once every accepted one is durable.
        """
        valid = []
        for item in events:
            if isinstance(item, InvalidEvent):
                self.reject(item)
            else:
                valid.append(item.domain)
        client = self._admit(request, valid)
        if client is None:
            return [item if isinstance(item, InvalidEvent) else None for item in events]
        now_ns = self._clock()
        visitor = self._visitors.visitor_id(client.ip, client.user_agent, now_ns / 1e9)
        outcomes: list[InvalidEvent | None] = []
        queued: dict[int, tuple[int, str]] = {}  # index -> (sequence number, site) when queued
        for index, item in enumerate(events):
            if isinstance(item, InvalidEvent):
                outcomes.append(item)
                continue
            try:
                queued[index] = (self._enqueue(item, client, now_ns, visitor), item.domain)
            except Refused as refusal:
                outcomes.append(refusal)
            else:
                outcomes.append(None)
        if self._writer.durable and queued:
            sequences = [sequence for sequence, _ in queued.values()]
            refused = await self._writer.refused_among(min(sequences), max(sequences))
            for index, (sequence, site) in queued.items() if refused else ():
                if any(first <= sequence <= last for first, last in refused):
                    outcomes[index] = _busy()
                    self._dropped(BACK_PRESSURE, site)
        self._accepted.inc(outcomes.count(None))
        return outcomes

    def reject(self, error: InvalidEvent) -> None:
        """Count an event refused as invalid (400, 413, 422...), per site when it named one."""
        if error.site_id is None:
            self._metrics.dropped(INVALID)
        else:
            self._dropped(INVALID, error.site_id)

    def _dropped(self, reason: str, site_id: str, user_agent: str = "") -> None:
        self._metrics.dropped(reason, site_id)
        self._drops.record(reason, site_id, user_agent)

    def _admit(self, request: RequestFacts, sites: Iterable[str]) -> Client | None:
        """Checks that hold for the whole request; None for a bot (drop, answer 202).

        ``sites`` are the sites of the request's valid events, for the drop counts.
        """
        settings = self._settings
        if not origin_allowed(request.origin, settings.site_ids):
            for site in sites:
                self._dropped(ORIGIN, site)
            raise Refused(403, "Origin is not in the site_ids allowlist")
        user_agent = analyse(request.user_agent)
        if settings.filter_bots and user_agent.is_bot:
            for site in sites:
                self._dropped(BOT, site, request.user_agent)
            return None
        ip = client_ip(
            request.peer, request.forwarded_for, request.real_ip, settings.trusted_proxies
        )
        return Client(ip or "", request.user_agent, user_agent, self._geo.locate(ip))

    def _enqueue(
        self, event: EventInput, client: Client, now_ns: int, visitor_id: int | None = None
    ) -> int:
        """Rate-limit, enrich and queue one event; returns its sequence number.

        ``visitor_id``: already known (one per batch: one client, one moment).
        """
        wait = self._limiter.acquire(event.domain, now_ns / 1e9)
        if wait:
            self._dropped(RATE_LIMITED, event.domain)
            raise Refused(
                429,
                f"rate limit exceeded for {event.domain}",
                retry_after=_ceil(min(wait, MAX_RETRY_AFTER)),
            )
        row = build_event(
            event,
            timestamp_us=now_ns // 1000,
            visitor_id=visitor_id
            if visitor_id is not None
            else self._visitors.visitor_id(client.ip, client.user_agent, now_ns / 1e9),
            user_agent=client.analysis,
            location=client.location,
        )
        if self._redact is not None:
            row = self._redact(row)
        try:
            self._events.send_nowait(row)
        except trio.WouldBlock:
            self._dropped(BACK_PRESSURE, event.domain)
            raise _busy() from None
        self._sent += 1
        return self._sent


def _busy() -> Refused:
    return Refused(503, "the server cannot store events right now; retry shortly", RETRY_AFTER)


def _ceil(seconds: float) -> int:
    whole = int(seconds)
    return whole if whole == seconds else whole + 1
