"""A small HTTP/1.1 load generator for ``POST /api/event``, built not to be the bottleneck.

Why hand-rolled, and why ``selectors``
--------------------------------------
The benchmark runs the server and the load generator on the same 2-core machine, so every
CPU cycle the client spends per request is taken from the server. General-purpose clients
(httpx, aiohttp, even asyncio streams) spend tens of microseconds per request on objects
the benchmark does not need: futures, tasks, transports, header dictionaries, URL parsing.
Here each worker process runs one plain ``selectors`` (epoll) loop over many non-blocking
keep-alive sockets and does, per request, one ``send`` of pre-built request bytes and one or
two ``recv`` calls, parsing only the status line and ``Content-Length`` (with a minimal
chunked-encoding fallback). No event-loop framework sits between the socket and the
timer, so the measured latency is the server's plus a few microseconds, and one process
drives several times the request rate a Python ASGI server can answer. Requests are built
once at start-up from a seeded random pool (sites, paths, referrers, browsers, client
addresses), so generating load costs no JSON encoding in the hot loop.

Work is spread over several processes (``multiprocessing``, spawn start method, by
default one per core) so that a single Python interpreter's speed never caps the load;
each reports its own CPU use, and :class:`LoadResult` says when a generator process was
close to saturation (``client_cpu`` near 1.0), which would make the numbers suspect.

Modes
-----
* closed loop (``rate=None``): ``connections`` connections, each sends its next request
  as soon as the previous answer arrives, for ``duration`` seconds. Measures capacity.
* open loop (``rate=R``): requests are *scheduled* at R per second in total, whatever
  the server does, and handed to the next idle connection (at most ``connections`` in
  flight). Latency is measured from the scheduled time, not the send time, so queueing
  inside the client when the server falls behind counts (no coordinated omission).
  Requests still waiting for a free connection when the time is up are reported as
  ``unsent``.

Only loopback or this machine's own addresses are meant as targets: the client address
of each event is *claimed* in ``X-Forwarded-For`` (a pool of public-looking addresses),
which Mallard believes because the real peer, 127.0.0.1, is a trusted proxy.

Use as a module::

    from loadgen import run_load
    result = run_load("http://127.0.0.1:8000", connections=16, duration=10)
    print(result.throughput, result.latency_ms["p99"])

or as a script::

    python benchmarks/loadgen.py http://127.0.0.1:8000 -c 64 -d 10
    python benchmarks/loadgen.py http://127.0.0.1:8000 --rate 2000 -c 64 -d 10 --json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import errno
import ipaddress
import json
import math
import multiprocessing as mp
import os
import random
import selectors
import socket
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

# ---------------------------------------------------------------------------------------
# Realistic events
# ---------------------------------------------------------------------------------------

SITES: list[tuple[str, int]] = [  # (site id, relative traffic)
    ("example.com", 40),
    ("shop.example.org", 25),
    ("blog.example.net", 15),
    ("docs.example.io", 12),
    ("news.example.co.uk", 8),
]

PATHS = [
    "/",
    "/pricing",
    "/about",
    "/contact",
    "/blog/",
    "/blog/why-privacy-matters",
    "/blog/2024/05/parquet-for-analytics",
    "/docs/getting-started",
    "/docs/api/events",
    "/products/42",
    "/products/1337-blue-widget",
    "/cart",
    "/checkout",
    "/signup",
    "/login",
    "/search?q=duck",
]

QUERIES = [
    "",
    "",
    "",
    "",
    "",
    "?utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale",
    "?utm_source=twitter&utm_medium=social",
    "?ref=producthunt",
    "?gclid=EAIaIQobChMI",
]

REFERRERS: list[tuple[str | None, int]] = [  # None: direct visit, no "r"
    (None, 40),
    ("https://www.google.com/", 25),
    ("https://t.co/", 6),
    ("https://twitter.com/", 3),
    ("https://x.com/", 3),
    ("https://www.bing.com/", 4),
    ("https://duckduckgo.com/", 4),
    ("https://news.ycombinator.com/", 3),
    ("https://www.reddit.com/r/selfhosted/", 3),
    ("https://www.facebook.com/", 3),
    ("internal", 6),  # another page of the same site
]

# Real browser user agents (desktop and mobile). No crawlers, no HTTP libraries: every
# request must be stored, so the benchmark can compare stored rows with 202 answers.
USER_AGENTS: list[tuple[str, int]] = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36",
        22,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/125.0.0.0 Safari/537.36",
        10,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        3,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
        6,
    ),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0", 6),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0", 2),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0", 2),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Safari/605.1.15",
        8,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        14,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        3,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.6478.71 Mobile Safari/537.36",
        10,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
        4,
    ),
    (
        "Mozilla/5.0 (Android 14; Mobile; rv:127.0) Gecko/127.0 Firefox/127.0",
        1,
    ),
]

SCREEN_WIDTHS = [360, 390, 393, 412, 414, 768, 820, 1024, 1280, 1366, 1440, 1536, 1920, 2560]

# First octets of publicly routed IPv4 space (RIR allocations), for addresses that look
# like real visitors. Candidates are also checked with ipaddress's ``is_global``.
# fmt: off
_PUBLIC_FIRST_OCTETS = [
    2, 5, 24, 31, 37, 46, 50, 62, 66, 68, 71, 73, 77, 78, 80, 81, 82, 84, 85, 86, 87, 88, 89,
    90, 91, 92, 93, 94, 95, 98, 99, 104, 108, 109, 112, 113, 118, 121, 124, 151, 173, 176,
    178, 179, 185, 186, 187, 188, 189, 190, 193, 194, 195, 200, 201, 212, 213, 217, 220,
]
# fmt: on


def client_address_pool(size: int = 600, seed: int = 7) -> list[str]:
    """Public-looking client addresses (about 1 in 10 IPv6), deterministic for a seed."""
    rng = random.Random(seed)
    pool: list[str] = []
    while len(pool) < size:
        if rng.random() < 0.1:
            prefix = rng.choice([0x2A02, 0x2A01, 0x2600, 0x2607, 0x2804, 0x2400])
            words = [prefix] + [rng.randrange(0x10000) for _ in range(7)]
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                ":".join(f"{word:x}" for word in words)
            )
        else:
            octets = [rng.choice(_PUBLIC_FIRST_OCTETS)] + [rng.randrange(256) for _ in range(3)]
            octets[3] = octets[3] or 1
            address = ipaddress.IPv4Address(".".join(map(str, octets)))
        if address.is_global:
            pool.append(str(address))
    return pool


def _weighted(rng: random.Random, items: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([item for item, _ in items], weights=[weight for _, weight in items])[0]


def make_event(rng: random.Random) -> tuple[dict[str, Any], str]:
    """One realistic ``/api/event`` body and the site's origin."""
    site = _weighted(rng, SITES)
    origin = f"https://{site}"
    path = rng.choice(PATHS)
    url = origin + path + ("" if "?" in path else rng.choice(QUERIES))
    body: dict[str, Any] = {"d": site, "n": "pageview", "u": url}
    referrer = _weighted(rng, REFERRERS)
    if referrer == "internal":
        referrer = origin + rng.choice(PATHS)
    if referrer is not None:
        body["r"] = referrer
    body["w"] = rng.choice(SCREEN_WIDTHS)
    kind = rng.random()
    if kind < 0.05:
        body["n"] = "signup"
        body["p"] = json.dumps({"plan": rng.choice(["free", "pro", "team"]), "trial": True})
    elif kind < 0.08:
        body["n"] = "purchase"
        body["ra"] = round(rng.uniform(5, 500), 2)
        body["rc"] = rng.choice(["USD", "EUR", "GBP"])
        body["p"] = json.dumps({"items": rng.randint(1, 5)})
    elif kind < 0.12:
        body["n"] = rng.choice(["outbound_click", "file_download", "newsletter_subscribe"])
    return body, origin


def build_requests(
    host: str, path: str = "/api/event", count: int = 2000, seed: int = 1
) -> list[bytes]:
    """``count`` complete HTTP/1.1 requests (head and body), ready to send as they are."""
    rng = random.Random(seed)
    addresses = client_address_pool()
    requests = []
    for _ in range(count):
        body, origin = make_event(rng)
        payload = json.dumps(body, separators=(",", ":")).encode()
        content_type = "text/plain;charset=UTF-8" if rng.random() < 0.5 else "application/json"
        head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            f"User-Agent: {_weighted(rng, USER_AGENTS)}\r\n"
            "Accept: */*\r\n"
            "Accept-Language: en-US,en;q=0.9\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Origin: {origin}\r\n"
            f"X-Forwarded-For: {rng.choice(addresses)}\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "\r\n"
        )
        requests.append(head.encode("latin-1") + payload)
    return requests


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadResult:
    """What one load run measured. Counts cover the measured window unless named total."""

    url: str
    mode: str  # "closed" or "rate"
    connections: int
    processes: int
    duration: float  # seconds of the measured window
    warmup: float
    target_rate: float | None
    sent: int  # requests sent in the measured window
    completed: int  # of those, answered
    status_counts: dict[int, int]
    errors: int  # transport errors: refused, reset, closed without answer, timeout
    error_kinds: dict[str, int]
    unsent: int  # open loop only: scheduled but no connection was free before the end
    throughput: float  # answered requests per second
    latency_ms: dict[str, float]  # p50, p90, p99, p99.9, max, mean
    total_status_counts: dict[int, int]  # warm-up included: what the server really answered
    client_cpu: list[float]  # per generator process: CPU seconds / wall seconds

    @property
    def ok(self) -> int:
        return self.status_counts.get(202, 0)

    @property
    def non_202(self) -> int:
        return sum(count for status, count in self.status_counts.items() if status != 202)

    @property
    def accepted_total(self) -> int:
        """Every 202 the server gave, warm-up included (what should be stored)."""
        return self.total_status_counts.get(202, 0)

    @property
    def client_saturated(self) -> bool:
        return any(cpu > 0.9 for cpu in self.client_cpu)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status_counts"] = {str(k): v for k, v in sorted(self.status_counts.items())}
        data["total_status_counts"] = {
            str(k): v for k, v in sorted(self.total_status_counts.items())
        }
        data["accepted_total"] = self.accepted_total
        data["client_saturated"] = self.client_saturated
        return data

    def summary(self) -> str:
        lat = self.latency_ms
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.status_counts.items())) or "-"
        load = f"rate {self.target_rate:g}/s" if self.mode == "rate" else "closed loop"
        saturated = "  (SATURATED: the generator may limit the result)"
        lines = [
            f"{self.url}  {load}, {self.connections} connections, {self.processes} processes, "
            f"{self.duration:g}s (+{self.warmup:g}s warm-up)",
            f"  sent {self.sent}, answered {self.completed} ({statuses}), "
            f"errors {self.errors}{_kinds(self.error_kinds)}, unsent {self.unsent}",
            f"  throughput {self.throughput:,.0f} req/s",
            f"  latency ms: p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
            f"p99.9 {lat['p99.9']:.2f}  max {lat['max']:.2f}",
            "  client CPU per process: "
            + ", ".join(f"{cpu:.0%}" for cpu in self.client_cpu)
            + (saturated if self.client_saturated else ""),
        ]
        return "\n".join(lines)


def _kinds(kinds: dict[str, int]) -> str:
    return f" ({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))})" if kinds else ""


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# ---------------------------------------------------------------------------------------
# The worker: one selectors loop over many keep-alive connections
# ---------------------------------------------------------------------------------------


def parse_response(buf: bytearray) -> tuple[int, int, bool] | None:
    """The response at the front of ``buf``: (status, its length, the server will close).

    None while incomplete. Reads only the status line, ``Content-Length``,
    ``Transfer-Encoding: chunked`` (without trailers) and ``Connection: close``.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    body_start = end + 4
    close = b"\r\nconnection: close" in head
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        total = body_start + length
        return (status, total, close) if len(buf) >= total else None
    if b"\r\ntransfer-encoding: chunked" in head:
        pos = body_start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2
            if size == 0:  # no trailers expected: the final CRLF follows
                return (status, pos + 2, close) if len(buf) >= pos + 2 else None
            pos += size + 2
            if len(buf) < pos:
                return None
    if status in (204, 304) or status < 200:
        return status, body_start, close
    return status, body_start, True  # body delimited by close: not expected here


class _Conn:
    __slots__ = ("buf", "index", "out", "retry_at", "scheduled", "sent_at", "sock", "window")

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.out = b""  # rest of a partially sent request
        self.sent_at = 0.0  # 0.0 when idle
        self.scheduled = 0.0  # open loop: when the request was due
        self.window = False  # the request in flight belongs to the measured window
        self.retry_at = 0.0


def _connect(address: tuple[str, int], family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(2.0)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _worker(
    address: tuple[str, int],
    family: int,
    host_header: str,
    path: str,
    connections: int,
    rate: float | None,
    phase: float,
    warmup: float,
    duration: float,
    timeout: float,
    seed: int,
    pipe: Any,
) -> None:
    """One generator process; reports a dict through ``pipe`` when done."""
    requests = build_requests(host_header, path, seed=seed)
    n_requests = len(requests)
    next_request = 0
    selector = selectors.DefaultSelector()
    conns = [_Conn(i) for i in range(connections)]
    idle: collections.deque[_Conn] = collections.deque()
    errors: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    total_statuses: collections.Counter[int] = collections.Counter()
    latencies = array("d")
    sent = 0
    completed = 0

    def open_conn(conn: _Conn, now: float) -> bool:
        try:
            conn.sock = _connect(address, family)
        except OSError as error:
            errors[f"connect: {errno.errorcode.get(error.errno or 0, type(error).__name__)}"] += 1
            conn.retry_at = now + 0.1
            return False
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        conn.buf.clear()
        conn.out = b""
        conn.sent_at = 0.0
        conn.retry_at = 0.0
        return True

    def close_conn(conn: _Conn) -> None:
        if conn.sock is not None:
            selector.unregister(conn.sock)
            conn.sock.close()
            conn.sock = None
        conn.sent_at = 0.0
        conn.out = b""
        conn.buf.clear()

    for conn in conns:
        if open_conn(conn, time.monotonic()):
            idle.append(conn)

    pipe.send("ready")
    start_at = pipe.recv()  # a shared CLOCK_MONOTONIC instant, the same in every process
    measure_from = start_at + warmup
    end_at = measure_from + duration
    drain_until = end_at + min(timeout, 5.0)
    interval = 1.0 / rate if rate else 0.0
    scheduled = 0  # open loop: requests scheduled so far; the next is due at
    next_due = start_at + phase  # start + phase + scheduled / rate (no float drift)
    pending: collections.deque[float] = collections.deque()  # open loop: due times

    while time.monotonic() < start_at:
        time.sleep(max(0.0, min(0.01, start_at - time.monotonic())))
    cpu_start = time.process_time()

    def send(conn: _Conn, now: float, due: float) -> None:
        nonlocal next_request, sent
        request = requests[next_request]
        next_request = (next_request + 1) % n_requests
        conn.sent_at = now
        conn.scheduled = due
        conn.window = measure_from <= due < end_at
        if conn.window:
            sent += 1
        try:
            written = conn.sock.send(request)  # type: ignore[union-attr]
        except OSError as error:
            fail(conn, f"send: {errno.errorcode.get(error.errno or 0, type(error).__name__)}")
            return
        if written < len(request):
            conn.out = request[written:]
            selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)  # type: ignore[arg-type]

    def fail(conn: _Conn, kind: str) -> None:
        """A request in flight got no answer: count it, start the connection afresh."""
        if conn.window:
            errors[kind] += 1
        close_conn(conn)
        if not open_conn(conn, time.monotonic()):
            return
        idle.append(conn)

    def finished(conn: _Conn, status: int, now: float) -> None:
        nonlocal completed
        total_statuses[status] += 1
        if conn.window:
            completed += 1
            statuses[status] += 1
            latencies.append((now - conn.scheduled) * 1000.0)
        conn.sent_at = 0.0

    last_sweep = time.monotonic()
    last_round = False  # open loop: the requests due just before the end still go out
    while True:
        now = time.monotonic()
        sending = now < end_at
        # hand out requests to idle connections
        if rate and (sending or not last_round):
            last_round = not sending
            while next_due <= now and next_due < end_at:
                pending.append(next_due)
                scheduled += 1
                next_due = start_at + phase + scheduled * interval
            while pending and idle:
                conn = idle.popleft()
                if conn.sock is not None:
                    send(conn, now, pending.popleft())
        elif sending:
            while idle:
                conn = idle.popleft()
                if conn.sock is not None:
                    send(conn, now, now)
        if not sending:
            in_flight = any(conn.sent_at for conn in conns)
            if not in_flight or now >= drain_until:
                break
        # wait for answers (or the next due request)
        if rate and sending and not pending:
            wait = max(0.0, min(next_due, end_at) - now)
        elif sending and idle and not rate:
            wait = 0.0
        else:
            wait = 0.05
        for key, events in selector.select(min(wait, 0.05)):
            conn = key.data
            sock = conn.sock
            if sock is None:
                continue
            if events & selectors.EVENT_WRITE and conn.out:
                try:
                    written = sock.send(conn.out)
                except OSError as error:
                    fail(conn, f"send: {errno.errorcode.get(error.errno or 0, 'OSError')}")
                    continue
                conn.out = conn.out[written:]
                if not conn.out:
                    selector.modify(sock, selectors.EVENT_READ, conn)
            if not events & selectors.EVENT_READ:
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as error:
                data = b""
                reason = errno.errorcode.get(error.errno or 0, "OSError")
            else:
                reason = "closed without answer"
            if not data:
                if conn.sent_at:
                    fail(conn, reason)
                else:  # an idle keep-alive connection the server closed: reopen quietly
                    close_conn(conn)
                    if conn in idle:
                        idle.remove(conn)
                    if open_conn(conn, time.monotonic()):
                        idle.append(conn)
                continue
            conn.buf += data
            if not conn.sent_at:
                continue  # unexpected bytes on an idle connection: ignore
            try:
                parsed = parse_response(conn.buf)
            except ValueError:
                fail(conn, "unparseable response")
                continue
            if parsed is None:
                continue
            status, used, close = parsed
            del conn.buf[:used]
            finished(conn, status, time.monotonic())
            if close:
                close_conn(conn)
                if open_conn(conn, time.monotonic()):
                    idle.append(conn)
            else:
                idle.append(conn)
        # timeouts and reconnects, a few times a second
        now = time.monotonic()
        if now - last_sweep > 0.1:
            last_sweep = now
            for conn in conns:
                if conn.sent_at and now - conn.sent_at > timeout:
                    fail(conn, "timeout")
                elif (
                    conn.sock is None
                    and conn.retry_at
                    and now >= conn.retry_at
                    and open_conn(conn, now)
                ):
                    idle.append(conn)

    cpu = time.process_time() - cpu_start
    wall = time.monotonic() - start_at
    for conn in conns:
        if conn.sent_at and conn.window:
            errors["no answer before the end"] += 1
        close_conn(conn)
    selector.close()
    pipe.send(
        {
            "sent": sent,
            "completed": completed,
            "statuses": dict(statuses),
            "total_statuses": dict(total_statuses),
            "errors": dict(errors),
            "unsent": sum(1 for due in pending if due >= measure_from),
            "latencies": latencies.tobytes(),
            "cpu": cpu / wall if wall > 0 else 0.0,
        }
    )
    pipe.close()


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(
    url: str,
    *,
    connections: int = 16,
    duration: float = 10.0,
    rate: float | None = None,
    processes: int | None = None,
    warmup: float = 0.0,
    timeout: float = 10.0,
    path: str = "/api/event",
    seed: int = 1,
) -> LoadResult:
    """Load ``url`` (``http://host:port``) with POST ``path``; see the module docstring.

    ``processes`` defaults to one per core, at most one per connection.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected http://HOST:PORT, got {url!r}")
    port = parts.port or 80
    info = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)[0]
    family, address = info[0], info[4][:2]
    if connections < 1:
        raise ValueError("connections must be >= 1")
    processes = min(processes or os.cpu_count() or 1, connections)
    ctx = mp.get_context("spawn")
    workers = []
    pipes = []
    for index, share in enumerate(_split(connections, processes)):
        parent_end, child_end = ctx.Pipe()
        per_process_rate = rate * share / connections if rate else None
        phase = index / rate if rate else 0.0
        process = ctx.Process(
            target=_worker,
            args=(
                address,
                family,
                parts.netloc,
                path,
                share,
                per_process_rate,
                phase,
                warmup,
                duration,
                timeout,
                seed * 1000 + index,
                child_end,
            ),
            daemon=True,
        )
        process.start()
        child_end.close()
        workers.append(process)
        pipes.append(parent_end)
    try:
        for pipe in pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("a load generator process did not start")
        start_at = time.monotonic() + 0.05
        for pipe in pipes:
            pipe.send(start_at)
        reports = []
        for pipe, process in zip(pipes, workers, strict=True):
            if not pipe.poll(warmup + duration + timeout + 60):
                raise RuntimeError("a load generator process did not finish")
            reports.append(pipe.recv())
            process.join(10)
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
                process.join()
    return _merge(url, rate, connections, processes, warmup, duration, reports)


def _merge(
    url: str,
    rate: float | None,
    connections: int,
    processes: int,
    warmup: float,
    duration: float,
    reports: list[dict[str, Any]],
) -> LoadResult:
    statuses: collections.Counter[int] = collections.Counter()
    total_statuses: collections.Counter[int] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    latencies = array("d")
    for report in reports:
        statuses.update(report["statuses"])
        total_statuses.update(report["total_statuses"])
        errors.update(report["errors"])
        latencies.frombytes(report["latencies"])
    ordered = sorted(latencies)
    completed = sum(report["completed"] for report in reports)
    latency = {
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "p99.9": percentile(ordered, 99.9),
        "max": ordered[-1] if ordered else 0.0,
        "mean": sum(ordered) / len(ordered) if ordered else 0.0,
    }
    return LoadResult(
        url=url,
        mode="rate" if rate else "closed",
        connections=connections,
        processes=processes,
        duration=duration,
        warmup=warmup,
        target_rate=rate,
        sent=sum(report["sent"] for report in reports),
        completed=completed,
        status_counts=dict(sorted(statuses.items())),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        unsent=sum(report["unsent"] for report in reports),
        throughput=completed / duration if duration > 0 else 0.0,
        latency_ms=latency,
        total_status_counts=dict(sorted(total_statuses.items())),
        client_cpu=[round(report["cpu"], 3) for report in reports],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Load POST /api/event of a Mallard (or compatible) server.",
        epilog="Closed loop by default; --rate switches to open loop at that many requests/s.",
    )
    parser.add_argument("url", help="http://HOST:PORT of the server (loopback only)")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("-r", "--rate", type=float, help="open loop: requests per second")
    parser.add_argument("-p", "--processes", type=int, help="default: one per core")
    parser.add_argument("-w", "--warmup", type=float, default=0.0, help="seconds not measured")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--path", default="/api/event")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run_load(
        args.url,
        connections=args.connections,
        duration=args.duration,
        rate=args.rate,
        processes=args.processes,
        warmup=args.warmup,
        timeout=args.timeout,
        path=args.path,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return 0 if result.errors == 0 and result.non_202 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
