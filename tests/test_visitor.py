"""Daily-rotating visitor ids, visits that cross UTC midnight, and the secret file."""

from __future__ import annotations

import hashlib
import hmac
import stat
from pathlib import Path

import pytest

from mallard.ingest.visitor import (
    SECONDS_PER_DAY,
    VisitorIds,
    daily_visitor_id,
    load_or_create_secret,
)

SECRET = b"0123456789abcdef0123456789abcdef"
IP = "203.0.113.7"
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
DAY = 19_900  # 2024-06-26
MIDNIGHT = (DAY + 1) * SECONDS_PER_DAY  # start of DAY + 1, UTC


def test_daily_visitor_id_is_deterministic_int64() -> None:
    first = daily_visitor_id(SECRET, IP, UA, DAY)
    assert first == daily_visitor_id(SECRET, IP, UA, DAY)
    assert isinstance(first, int)
    assert -(2**63) <= first < 2**63


def test_daily_visitor_id_is_the_truncated_hmac() -> None:
    digest = hmac.new(SECRET, f"{IP}\n{UA}\n2024-06-26".encode(), hashlib.sha256).digest()
    assert daily_visitor_id(SECRET, IP, UA, DAY) == int.from_bytes(digest[:8], "big", signed=True)


@pytest.mark.parametrize(
    ("secret", "ip", "user_agent", "day"),
    [
        (SECRET, "203.0.113.8", UA, DAY),
        (SECRET, "2001:db8::7", UA, DAY),
        (SECRET, IP, UA + " extra", DAY),
        (SECRET, IP, "", DAY),
        (SECRET, IP, UA, DAY + 1),
        (SECRET, IP, UA, DAY - 1),
        (b"another secret", IP, UA, DAY),
    ],
)
def test_daily_visitor_id_differs(secret: bytes, ip: str, user_agent: str, day: int) -> None:
    assert daily_visitor_id(secret, ip, user_agent, day) != daily_visitor_id(SECRET, IP, UA, DAY)


def test_same_day_same_id() -> None:
    visitors = VisitorIds(SECRET)
    morning = visitors.visitor_id(IP, UA, DAY * SECONDS_PER_DAY + 60)
    evening = visitors.visitor_id(IP, UA, DAY * SECONDS_PER_DAY + 80_000)
    assert morning == evening == daily_visitor_id(SECRET, IP, UA, DAY)


def test_visit_across_midnight_keeps_yesterdays_id() -> None:
    visitors = VisitorIds(SECRET)
    yesterday = daily_visitor_id(SECRET, IP, UA, DAY)
    assert visitors.visitor_id(IP, UA, MIDNIGHT - 600) == yesterday
    assert visitors.visitor_id(IP, UA, MIDNIGHT + 600) == yesterday  # 20 minutes later
    assert visitors.visitor_id(IP, UA, MIDNIGHT + 1800) == yesterday  # still active
    assert visitors.visitor_id(IP, UA, MIDNIGHT + 1800 + 1801) == daily_visitor_id(
        SECRET, IP, UA, DAY + 1
    )  # the visit ended: today's id


def test_previous_event_more_than_30_minutes_before_gives_todays_id() -> None:
    visitors = VisitorIds(SECRET)
    visitors.visitor_id(IP, UA, MIDNIGHT - 1000)
    assert visitors.visitor_id(IP, UA, MIDNIGHT + 801) == daily_visitor_id(SECRET, IP, UA, DAY + 1)


def test_new_visitor_right_after_midnight_gets_todays_id() -> None:
    visitors = VisitorIds(SECRET)
    visitors.visitor_id("198.51.100.1", UA, MIDNIGHT - 10)  # someone else, active
    assert visitors.visitor_id(IP, UA, MIDNIGHT + 1) == daily_visitor_id(SECRET, IP, UA, DAY + 1)


def test_carried_id_is_per_client() -> None:
    visitors = VisitorIds(SECRET)
    visitors.visitor_id(IP, UA, MIDNIGHT - 10)
    other_ua = UA.replace("125.0", "126.0")
    assert visitors.visitor_id(IP, other_ua, MIDNIGHT + 10) == daily_visitor_id(
        SECRET, IP, other_ua, DAY + 1
    )


def test_forget_inactive_drops_ended_visits() -> None:
    visitors = VisitorIds(SECRET)
    start = DAY * SECONDS_PER_DAY + 3600
    visitors.visitor_id("198.51.100.1", UA, start)
    visitors.visitor_id("198.51.100.2", UA, start + 1000)
    assert visitors.active_count == 2
    visitors.forget_inactive(start + 1000)
    assert visitors.active_count == 2
    visitors.forget_inactive(start + 1801)
    assert visitors.active_count == 1
    visitors.forget_inactive(start + 1000 + 1801)
    assert visitors.active_count == 0


def test_forget_inactive_drops_old_days_and_keeps_carried_visits() -> None:
    visitors = VisitorIds(SECRET)
    visitors.visitor_id("198.51.100.1", UA, (DAY - 3) * SECONDS_PER_DAY)  # long gone
    visitors.visitor_id(IP, UA, MIDNIGHT - 60)  # crosses midnight
    visitors.forget_inactive(MIDNIGHT + 60)
    assert visitors.active_count == 1
    assert visitors.visitor_id(IP, UA, MIDNIGHT + 120) == daily_visitor_id(SECRET, IP, UA, DAY)


def test_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    secret = load_or_create_secret(keys)
    path = keys / "secret"
    assert len(secret) >= 32
    assert path.read_bytes().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(keys) == secret
    assert load_or_create_secret(tmp_path / "other") != secret


def test_existing_secret_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"my-own-secret\n")
    assert load_or_create_secret(tmp_path) == b"my-own-secret"


def test_empty_secret_file_is_not_used_as_the_key(tmp_path: Path) -> None:
    # A crash between creating the file and writing it leaves it empty; an empty HMAC
    # key would make every visitor id computable by anyone.
    (tmp_path / "secret").write_bytes(b"")
    assert load_or_create_secret(tmp_path) != b""
