"""``/api/event`` as a lean ASGI endpoint, in front of the Quart app.

Ingestion is the hot path: it reads the body itself (enforcing the 64 KB limit
while reading), and answers without going through the framework's request and
response objects. Every answer carries ``Access-Control-Allow-Origin: *``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
import trio

from mallard.ingest.pipeline import RETRY_AFTER, Ingestor, Refused, RequestFacts
from mallard.ingest.validation import (
    MAX_BATCH_BYTES,
    MAX_BODY_BYTES,
    EventInput,
    InvalidEvent,
    parse_batch,
    parse_body,
    parse_query,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("mallard.ingest")

EVENT_PATH = "/api/event"
BATCH_PATH = "/api/events"
STOPPING = Refused(503, "the server is stopping; send it again shortly", RETRY_AFTER)
# The smallest transparent GIF: 1x1, one transparent colour, 43 bytes.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
assert len(PIXEL_GIF) == 43

CORS = (b"access-control-allow-origin", b"*")
PREFLIGHT_HEADERS = [
    CORS,
    (b"access-control-allow-methods", b"POST, GET, OPTIONS"),
    (b"access-control-allow-headers", b"Content-Type"),
    (b"access-control-max-age", b"86400"),
]
PIXEL_HEADERS = [
    CORS,
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(PIXEL_GIF)).encode()),
    (b"cache-control", b"no-store"),
]
ACCEPTED_HEADERS = [CORS, (b"content-length", b"0")]
ACCEPTED_RESULT = {"status": 202}  # one event of a batch, as its answer lists it
_WANTED_HEADERS = {
    b"content-length",
    b"user-agent",
    b"origin",
    b"x-forwarded-for",
    b"x-real-ip",
}


class BodyTooLarge(InvalidEvent):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_error(send: Send, error: InvalidEvent) -> None:
    body = json.dumps({"error": error.message}).encode()
    headers = [
        CORS,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if isinstance(error, Refused) and error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    await _respond(send, error.status, headers, body)


async def _read_body(
    receive: Receive, declared_length: bytes | None, limit: int = MAX_BODY_BYTES
) -> bytes:
    if declared_length is not None:
        try:
            if int(declared_length) > limit:
                raise BodyTooLarge(limit)
        except ValueError:
            raise InvalidEvent(400, "Content-Length is not a number") from None
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidEvent(400, "client disconnected before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _quiet_if_closing(send: Send) -> Send:
    """``send`` that lets go when hypercorn closes the connection under it.

    A client that hangs up while its answer is written (one whose oversized body
    was refused before it was read, say) makes hypercorn shut the socket down
    while the answer's last write is under way; that write raises
    ``trio.BusyResourceError``, which hypercorn does not catch as it does the
    client's other ways of leaving. The client is gone either way: no traceback.
    """

    async def guarded(message: Message) -> None:
        with contextlib.suppress(trio.BusyResourceError):
            await send(message)

    return guarded


class IngestEndpoint:
    """ASGI app: ``/api/event`` here, every other path to ``fallback`` (the Quart app)."""

    def __init__(
        self, ingestor: Ingestor, fallback: ASGIApp, stopping: trio.Event | None = None
    ) -> None:
        self._ingestor = ingestor
        self._fallback = fallback
        self._stopping = trio.Event() if stopping is None else stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send = _quiet_if_closing(send)
        if scope["type"] != "http" or scope["path"] not in (EVENT_PATH, BATCH_PATH):
            await self._fallback(scope, receive, send)
            return
        if self._stopping.is_set() and scope["method"] != "OPTIONS":
            # Stopping: hypercorn closes idle connections now, and may close the one
            # this request just arrived on before its answer. Not stored, it can be
            # sent again without being counted twice.
            await self._refuse(send, STOPPING)
            return
        if scope["path"] == BATCH_PATH:
            await self._batch(scope, receive, send)
            return
        method = scope["method"]
        if method == "OPTIONS":
            await _respond(send, 204, PREFLIGHT_HEADERS)
            return
        if method not in ("POST", "GET", "HEAD"):
            error = InvalidEvent(405, f"{method} is not allowed on {EVENT_PATH}; use POST or GET")
            await self._refuse(send, error)
            return
        headers = _headers(scope)
        try:
            event: EventInput
            if method == "POST":
                event = parse_body(await _read_body(receive, headers.get(b"content-length")))
            else:
                event = parse_query(scope["query_string"])
            if method != "HEAD":  # the pixel's headers only: link checkers are no visitors
                await self._ingestor.ingest(event, _request_facts(scope, headers))
        except InvalidEvent as error:
            await self._refuse(send, error)
            return
        if method == "POST":
            await _respond(send, 202, ACCEPTED_HEADERS)
        else:
            await _respond(send, 200, PIXEL_HEADERS, PIXEL_GIF if method == "GET" else b"")

    async def _batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /api/events``: up to 1,000 events (JSON array or NDJSON), 1 MB."""
        method = scope["method"]
        if method == "OPTIONS":
            await _respond(send, 204, PREFLIGHT_HEADERS)
            return
        if method != "POST":
            await self._refuse(send, InvalidEvent(405, f"use POST on {BATCH_PATH}"))
            return
        headers = _headers(scope)
        try:
            body = await _read_body(receive, headers.get(b"content-length"), MAX_BATCH_BYTES)
            outcomes = await self._ingestor.ingest_batch(
                parse_batch(body), _request_facts(scope, headers)
            )
        except InvalidEvent as error:
            await self._refuse(send, error)
            return
        results = [
            ACCEPTED_RESULT
            if outcome is None
            else {"status": outcome.status, "error": outcome.message}
            for outcome in outcomes
        ]
        accepted = outcomes.count(None)
        payload = msgspec.json.encode(
            {"accepted": accepted, "rejected": len(outcomes) - accepted, "results": results}
        )
        status, retry_after = _batch_status(outcomes)
        headers = [CORS, (b"content-type", b"application/json"),
                   (b"content-length", str(len(payload)).encode())]  # fmt: skip
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await _respond(send, status, headers, payload)

    async def _refuse(self, send: Send, error: InvalidEvent) -> None:
        """Answer an error; an invalid request counts as one dropped event.

        Refusals (403, 429, 503) were counted where they were decided.
        """
        if not isinstance(error, Refused):
            self._ingestor.reject(error)
        await _respond_error(send, error)


def _batch_status(outcomes: list[InvalidEvent | None]) -> tuple[int, int | None]:
    """A batch's status and Retry-After: 202 when an event was accepted; when none was
    but each was only turned away for now (429, 503), the gravest of those with the
    longest wait, so that a client sends the batch again; else 400."""
    if None in outcomes:
        return 202, None
    refusals = [o for o in outcomes if isinstance(o, Refused) and o.status in (429, 503)]
    if len(refusals) < len(outcomes):
        return 400, None
    waits = [r.retry_after for r in refusals if r.retry_after is not None]
    return max(r.status for r in refusals), max(waits, default=None)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _WANTED_HEADERS:
            headers.setdefault(name, value)  # the first occurrence wins
    return headers


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _request_facts(scope: Scope, headers: dict[bytes, bytes]) -> RequestFacts:
    client = scope.get("client")
    return RequestFacts(
        peer=client[0] if client else None,
        user_agent=_text(headers.get(b"user-agent")) or "",
        origin=_text(headers.get(b"origin")),
        forwarded_for=_text(headers.get(b"x-forwarded-for")),
        real_ip=_text(headers.get(b"x-real-ip")),
    )
