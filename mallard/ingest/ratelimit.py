"""Per-site token buckets: ``rate`` events per second, bursts up to ``burst``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    tokens: float
    updated: float


class RateLimiter:
    """Admits or refuses events per site; a rate of 0 admits everything."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, site_id: str, now: float) -> float:
        """Take a token for ``site_id``: 0.0 if admitted, else seconds until one frees up."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(site_id)
        if bucket is None:
            bucket = self._buckets[site_id] = TokenBucket(self.burst, now)
        else:
            if now > bucket.updated:  # a clock stepping back must not mint tokens later
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
                bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def forget_idle(self, now: float) -> int:
        """Drop buckets that have refilled completely (a new one would be identical)."""
        idle = [
            site
            for site, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst
        ]
        for site in idle:
            del self._buckets[site]
        return len(idle)

    def __len__(self) -> int:
        return len(self._buckets)
