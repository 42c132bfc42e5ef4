"""The ingestion decision for one request, after the body has been read.

Order of checks, so that invalid floods never spend a site's rate budget:
validation (400/422, done by the caller while parsing), Origin (403), bot
filter (silently dropped), rate limit (429), queue space (503).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

import trio

from mallard.config import Settings
from mallard.ingest.client import client_ip
from mallard.ingest.enrich import build_event
from mallard.ingest.geo import GeoLookup, Location
from mallard.ingest.ratelimit import RateLimiter
from mallard.ingest.useragent import UserAgentInfo, analyse
from mallard.ingest.validation import EventInput, InvalidEvent
from mallard.ingest.visitor import VisitorIds
from mallard.storage.schema import Event
from mallard.storage.writer import EventWriter

RETRY_AFTER = 1  # seconds, for 503 answers


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

    async def ingest(self, event: EventInput, request: RequestFacts) -> Outcome:
        """Queue the event for storage, or raise :class:`Refused`.

        With the write-ahead log, returns only once the event is durable.
        """
        client = self._admit(request)
        if client is None:
            return Outcome.BOT
        sequence = self._enqueue(event, client, self._clock())
        if self._writer.durable and not await self._writer.wait_durable(sequence):
            raise _busy()
        return Outcome.STORED

    async def ingest_batch(
        self, events: list[EventInput | InvalidEvent], request: RequestFacts
    ) -> list[InvalidEvent | None]:
        """Several events of one request: the outcome of each, None where accepted.

        Request-wide checks (Origin, bots) apply to all; the rate limit and the
        queue to each event in order. Returns once every accepted one is durable.
        """
        client = self._admit(request)
        if client is None:
            return [item if isinstance(item, InvalidEvent) else None for item in events]
        now_ns = self._clock()
        outcomes: list[InvalidEvent | None] = []
        sequences: dict[int, int] = {}  # index -> sequence number of a queued event
        for index, item in enumerate(events):
            if isinstance(item, InvalidEvent):
                outcomes.append(item)
                continue
            try:
                sequences[index] = self._enqueue(item, client, now_ns)
            except Refused as refusal:
                outcomes.append(refusal)
            else:
                outcomes.append(None)
        if self._writer.durable:
            for index, sequence in sequences.items():
                if not await self._writer.wait_durable(sequence):
                    outcomes[index] = _busy()
        return outcomes

    def _admit(self, request: RequestFacts) -> Client | None:
        """Checks that hold for the whole request; None for a bot (drop, answer 202)."""
        settings = self._settings
        if not origin_allowed(request.origin, settings.site_ids):
            raise Refused(403, "Origin is not in the site_ids allowlist")
        user_agent = analyse(request.user_agent)
        if settings.filter_bots and user_agent.is_bot:
            return None
        ip = client_ip(
            request.peer, request.forwarded_for, request.real_ip, settings.trusted_proxies
        )
        return Client(ip or "", request.user_agent, user_agent, self._geo.locate(ip))

    def _enqueue(self, event: EventInput, client: Client, now_ns: int) -> int:
        """Rate-limit, enrich and queue one event; returns its sequence number."""
        wait = self._limiter.acquire(event.domain, now_ns / 1e9)
        if wait:
            raise Refused(429, f"rate limit exceeded for {event.domain}", retry_after=_ceil(wait))
        row = build_event(
            event,
            timestamp_us=now_ns // 1000,
            visitor_id=self._visitors.visitor_id(client.ip, client.user_agent, now_ns / 1e9),
            user_agent=client.analysis,
            location=client.location,
        )
        try:
            self._events.send_nowait(row)
        except trio.WouldBlock:
            raise _busy() from None
        self._sent += 1
        return self._sent


def _busy() -> Refused:
    return Refused(503, "the server cannot store events right now; retry shortly", RETRY_AFTER)


def _ceil(seconds: float) -> int:
    whole = int(seconds)
    return whole if whole == seconds else whole + 1
