"""Per-client lockout after repeated failed logins, in memory only.

The key is the client's address. It lives in this process's memory for at most
``duration`` seconds and is never written to disk, a log line or a metric. With
several server processes each counts on its own.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import time
from collections.abc import Callable, Sequence

from mallard.config import Network
from mallard.ingest.client import client_ip

MAX_TRACKED = 100_000  # clients remembered at once; past that, finished entries are dropped


@dataclasses.dataclass
class _Record:
    failures: int
    since: float  # first failure of the current window
    locked_until: float = 0.0


class Lockout:
    """``max_failures`` failures within ``duration`` seconds lock a client for ``duration``."""

    def __init__(
        self, max_failures: int, duration: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.duration = duration
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may try again, or None when it may now."""
        record = self._records.get(client)
        if record is None:
            return None
        remaining = record.locked_until - self._clock()
        return math.ceil(remaining) if remaining > 0 else None

    def failed(self, client: str) -> None:
        now = self._clock()
        record = self._records.get(client)
        if record is None or self._finished(record, now):
            if len(self._records) >= MAX_TRACKED:
                self._forget_finished(now)
            record = self._records[client] = _Record(failures=0, since=now)
        record.failures += 1
        if record.failures >= self.max_failures:
            record.locked_until = now + self.duration

    def succeeded(self, client: str) -> None:
        self._records.pop(client, None)

    def _finished(self, record: _Record, now: float) -> bool:
        """Neither locked nor within its counting window any more."""
        return now >= record.locked_until and now - record.since >= self.duration

    def _forget_finished(self, now: float) -> None:
        for client in [c for c, r in self._records.items() if self._finished(r, now)]:
            del self._records[client]
        while len(self._records) >= MAX_TRACKED:  # all still active: drop the oldest
            del self._records[next(iter(self._records))]


def client_key(
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    trusted_proxies: Sequence[Network],
) -> str:
    """The address to count failures against: the right-most hop that is not a trusted proxy.

    Unlike the left-most ``X-Forwarded-For`` entry, which the client writes
    itself, this is the address the last trusted proxy saw, so a client cannot
    escape its lockout by sending a new header each time.
    """
    hops = [hop for hop in reversed((forwarded_for or "").split(",")) if hop.strip()]
    if not hops and real_ip:
        hops = [real_ip]
    address = _address(peer)
    for hop in hops:
        if address is None or not any(address in network for network in trusted_proxies):
            break
        address = _address(hop)
    return str(address) if address is not None else "unknown"


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    parsed = client_ip(text, None, None, ()) if text else None  # parse and normalise only
    return ipaddress.ip_address(parsed) if parsed is not None else None
