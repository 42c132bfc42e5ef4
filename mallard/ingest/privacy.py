"""Optional privacy rules applied to each row before it is stored.

``gdpr_mode`` turns every rule on; each can also be turned on alone. Which
rules apply is decided once, at start: :func:`redactor` composes them into
one function (or None), so the ingestion path pays only for what is enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from mallard.config import Settings
from mallard.storage.schema import Event

HOUR_US = 3_600_000_000


class PrivacyRules(NamedTuple):
    strip_referrer_query: bool = False
    round_timestamps: bool = False
    drop_versions: bool = False
    drop_screen_size: bool = False
    country_only: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> PrivacyRules:
        """Each rule as set, or all of them with ``gdpr_mode``."""
        return cls(*(settings.gdpr_mode or getattr(settings, rule) for rule in cls._fields))


def strip_query(url: str | None) -> str | None:
    """The URL without its query string and fragment: ``https://host/path``."""
    if url is None:
        return None
    return url.split("?", 1)[0].split("#", 1)[0]


def floor_to_hour(timestamp_us: int) -> int:
    """The start of the UTC hour a timestamp (microseconds since the epoch) falls in."""
    return timestamp_us - timestamp_us % HOUR_US


def _nothing(_: Any) -> None:
    return None


def field_rules(rules: PrivacyRules) -> dict[str, Callable[[Any], Any]]:
    """For each stored column a rule changes: the function that changes it."""
    changes: dict[str, Callable[[Any], Any]] = {}
    if rules.strip_referrer_query:
        changes["referrer"] = strip_query
    if rules.round_timestamps:
        changes["timestamp"] = floor_to_hour
    if rules.drop_versions:
        changes["browser_version"] = changes["os_version"] = _nothing
    if rules.drop_screen_size:  # the device class derived from it stays
        changes["screen_width"] = _nothing
    if rules.country_only:
        changes["region"] = changes["city"] = _nothing
    return changes


def redactor(rules: PrivacyRules) -> Callable[[Event], Event] | None:
    """One function applying every enabled rule to a row; None when no rule is on."""
    changes = [(Event._fields.index(name), change) for name, change in field_rules(rules).items()]
    if not changes:
        return None

    def redact(event: Event) -> Event:
        values = list(event)
        for index, change in changes:
            values[index] = change(values[index])
        return Event._make(values)

    return redact
