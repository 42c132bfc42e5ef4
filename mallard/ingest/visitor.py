"""Pseudonymous visitor ids that rotate every UTC day.

``visitor_id = HMAC-SHA256(secret, IP, User-Agent, UTC date)``, truncated to a
signed 64-bit integer. The IP is used here and nowhere else: it is never
stored. Because the date is part of the input, the same person gets an
unrelated id tomorrow, and nobody (Mallard included) can link the two days.

A visit that spans UTC midnight must not become two visitors: while the id a
client had yesterday is still in an active visit (an event within the last
``visit_timeout`` seconds), that id keeps being used, as Plausible does with its
previous day's salt. Only ids of visits active in the last 30 minutes are kept
in memory, and only as numbers.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import os
import stat
from pathlib import Path

SECONDS_PER_DAY = 86_400
VISIT_TIMEOUT_SECONDS = 30 * 60


def load_or_create_secret(keys_dir: Path) -> bytes:
    """The HMAC key kept in ``keys_dir/secret`` (mode 0600), created on first use.

    The file is written aside and linked into place, so no process ever reads
    it half-written; several processes starting at once agree on one key.
    """
    path = keys_dir / "secret"
    existing = _read_secret(path)
    if existing:
        return existing
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = os.urandom(32).hex().encode()
    staging = keys_dir / f".secret-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(secret)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(staging, path)
        except FileExistsError:
            existing = _read_secret(path)
            if existing:  # another process won the race: use its key
                return existing
            os.replace(staging, path)  # an empty file left by a crash: replace it
    finally:
        staging.unlink(missing_ok=True)
    return secret


def _read_secret(path: Path) -> bytes | None:
    try:
        return path.read_bytes().strip() or None
    except FileNotFoundError:
        return None


@functools.lru_cache(maxsize=8)
def _iso_date(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def daily_visitor_id(secret: bytes, ip: str, user_agent: str, day: int) -> int:
    """The visitor id of (IP, User-Agent) on ``day`` (days since the epoch, UTC)."""
    message = f"{ip}\n{user_agent}\n{_iso_date(day)}".encode()
    digest = hmac.digest(secret, message, "sha256")
    return int.from_bytes(digest[:8], "big", signed=True)


class VisitorIds:
    """Assigns visitor ids, carrying a visit's id across UTC midnight."""

    def __init__(self, secret: bytes, visit_timeout: float = VISIT_TIMEOUT_SECONDS) -> None:
        self._secret = secret
        self._visit_timeout = visit_timeout
        self._last_seen: dict[int, dict[int, float]] = {}  # day -> {visitor id: seconds}

    def visitor_id(self, ip: str, user_agent: str, now: float) -> int:
        """The id for this client at ``now`` (Unix seconds), and note it as active."""
        day = int(now // SECONDS_PER_DAY)
        visitor = None
        yesterday = self._last_seen.get(day - 1)
        if yesterday:
            previous = daily_visitor_id(self._secret, ip, user_agent, day - 1)
            seen = yesterday.get(previous)
            if seen is not None and now - seen <= self._visit_timeout:
                visitor, day = previous, day - 1
        if visitor is None:
            visitor = daily_visitor_id(self._secret, ip, user_agent, day)
        self._last_seen.setdefault(day, {})[visitor] = now
        return visitor

    def forget_inactive(self, now: float) -> None:
        """Drop ids whose visit has ended; run periodically to bound memory."""
        today = int(now // SECONDS_PER_DAY)
        for day in list(self._last_seen):
            if day < today - 1:
                del self._last_seen[day]
                continue
            seen = self._last_seen[day]
            for visitor in [v for v, last in seen.items() if now - last > self._visit_timeout]:
                del seen[visitor]
            if not seen and day < today:
                del self._last_seen[day]

    @property
    def active_count(self) -> int:
        return sum(len(seen) for seen in self._last_seen.values())
