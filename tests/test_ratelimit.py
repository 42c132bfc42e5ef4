"""Per-site token buckets, driven with explicit clock values."""

from __future__ import annotations

import pytest

from mallard.ingest.ratelimit import RateLimiter


def test_burst_then_refusal_with_retry_after() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.acquire("a.com", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a.com", 100.0) == pytest.approx(0.5)
    assert limiter.acquire("a.com", 100.25) == pytest.approx(0.25)  # half a token by now


def test_refill_over_time() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    for _ in range(3):
        limiter.acquire("a.com", 0.0)
    assert limiter.acquire("a.com", 0.5) == 0.0  # one token back after 1/rate seconds
    assert limiter.acquire("a.com", 0.5) > 0.0
    assert limiter.acquire("a.com", 1.0) == 0.0


def test_refill_is_capped_at_burst() -> None:
    limiter = RateLimiter(rate=10, burst=2)
    limiter.acquire("a.com", 0.0)
    results = [limiter.acquire("a.com", 3600.0) for _ in range(3)]
    assert results[:2] == [0.0, 0.0]
    assert results[2] == pytest.approx(0.1)


def test_refused_requests_do_not_use_tokens() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.acquire("a.com", 0.0) == 0.0
    for _ in range(5):
        assert limiter.acquire("a.com", 0.0) == pytest.approx(1.0)
    assert limiter.acquire("a.com", 1.0) == 0.0


def test_sites_are_isolated() -> None:
    limiter = RateLimiter(rate=1, burst=2)
    assert [limiter.acquire("a.com", 0.0) for _ in range(3)][-1] > 0.0
    assert [limiter.acquire("b.com", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("b.com", 0.0) > 0.0
    assert len(limiter) == 2


def test_burst_below_one_still_admits_one() -> None:
    limiter = RateLimiter(rate=5, burst=0)
    assert limiter.acquire("a.com", 0.0) == 0.0
    assert limiter.acquire("a.com", 0.0) == pytest.approx(0.2)


def test_rate_zero_is_disabled() -> None:
    limiter = RateLimiter(rate=0, burst=0)
    assert limiter.enabled is False
    assert all(limiter.acquire("a.com", 0.0) == 0.0 for _ in range(10_000))
    assert len(limiter) == 0
    assert RateLimiter(rate=0.5, burst=1).enabled is True


def test_forget_idle_drops_only_refilled_buckets() -> None:
    limiter = RateLimiter(rate=1, burst=2)
    limiter.acquire("full.com", 0.0)  # one token short, refilled by t=1
    limiter.acquire("empty.com", 0.0)
    limiter.acquire("empty.com", 0.0)  # two short, refilled by t=2
    assert limiter.forget_idle(0.5) == 0
    assert limiter.forget_idle(1.0) == 1
    assert len(limiter) == 1
    assert limiter.acquire("empty.com", 1.0) == 0.0  # kept: its state still counts
    assert limiter.acquire("empty.com", 1.0) > 0.0
    assert limiter.forget_idle(10.0) == 1
    assert len(limiter) == 0
