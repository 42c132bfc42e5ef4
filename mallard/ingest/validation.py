"""Validation of incoming events, exactly as the ingestion spec sets it out.

Pure functions: bytes or query strings in, an :class:`EventInput` out, or an
:class:`InvalidEvent` carrying the HTTP status and a message that names the
offending field. Checks run in the spec's order of precedence: unparseable
body (400), missing field (422), empty or invalid field (400).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import iso4217
import msgspec

MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 1000
MAX_LENGTH = {"d": 256, "n": 256, "u": 2048, "r": 2048, "p": 4096}
# A site's events live in a folder named ``site_id=<site>`` (the documented layout),
# and file systems allow 255 bytes per name: a longer site id could never be stored,
# so it is no site id anywhere (ingestion, settings, queries, the sites API).
MAX_SITE_ID_LENGTH = 255 - len("site_id=")
NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
SITE_ID_PATTERN = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_SITE_ID_LENGTH}}}")
SITE_ID_RULE = f"up to {MAX_SITE_ID_LENGTH} letters, digits, '.', '-', '_', ':'"
MAX_SCREEN_WIDTH = 100_000
MAX_REVENUE = Decimal("9999999999.99")  # DECIMAL(12, 2)
CENTS = Decimal("0.01")


class InvalidEvent(Exception):
    """The request cannot become an event; ``status`` is the HTTP answer.

    ``site_id`` is the event's site when its ``d`` was valid (for drop counts).
    """

    site_id: str | None = None

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class EventInput:
    """A validated event as the client described it, before enrichment."""

    domain: str
    name: str
    url: str
    referrer: str | None = None
    screen_width: int | None = None
    props: str | None = None  # canonical JSON text of an object
    revenue_amount: Decimal | None = None
    revenue_currency: str | None = None
    hash_mode: bool = False


_DECODER = msgspec.json.Decoder()
# a high surrogate's escape without a low one after it: msgspec calls that "truncated"
LONE_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])")


def _loads(text: str) -> Any:
    """Strict JSON (no NaN or Infinity, integers of any size) at C speed; ValueError if bad."""
    try:
        return _DECODER.decode(text)
    except msgspec.MsgspecError as error:
        if str(error).startswith("Input data was truncated") and LONE_SURROGATE.search(text):
            message = "a \\uD800-\\uDBFF escape lacks the \\uDC00-\\uDFFF after it"
            raise ValueError(message) from None
        raise ValueError(str(error)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_body(body: bytes) -> EventInput:
    """Validate a POST body (JSON, whatever its Content-Type)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(400, "body is not valid UTF-8") from None
    try:
        data = _loads(text)
    except ValueError as error:
        raise InvalidEvent(400, f"body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidEvent(400, "body must be a JSON object")
    return validate_fields(data)


def parse_batch(body: bytes) -> list[EventInput | InvalidEvent]:
    """A batch: a JSON array of events, or NDJSON (one event object per line).

    Each event is validated on its own; a bad one becomes its InvalidEvent in
    the list. A body that is neither, or holds too many events, raises.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(400, "body is not valid UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            items: list[Any] = _loads(text)
        except ValueError as error:
            raise InvalidEvent(400, f"body is not a valid JSON array: {error}") from None
    else:
        items = []
        for number, line in enumerate(text.split("\n"), start=1):  # not at U+2028 and such
            if line.strip():
                try:
                    items.append(_loads(line))
                except ValueError:
                    items.append(InvalidEvent(400, f"line {number} is not valid JSON"))
    if not items:
        raise InvalidEvent(400, "the batch holds no events")
    if len(items) > MAX_BATCH_EVENTS:
        raise InvalidEvent(413, f"a batch holds at most {MAX_BATCH_EVENTS} events")
    return [_batch_item(item) for item in items]


def _batch_item(item: Any) -> EventInput | InvalidEvent:
    if isinstance(item, InvalidEvent):
        return item
    if not isinstance(item, dict):
        return InvalidEvent(400, "each event must be a JSON object")
    try:
        return validate_fields(item)
    except InvalidEvent as error:
        return error


def parse_query(query_string: bytes | str) -> EventInput:
    """Validate the pixel endpoint's query string; ``n`` defaults to pageview."""
    if isinstance(query_string, bytes):
        try:
            query_string = query_string.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(400, "query string is not valid UTF-8") from None
    params = dict(parse_qsl(query_string, keep_blank_values=True))
    fields: dict[str, Any] = {"n": "pageview"}
    fields.update({key: params[key] for key in ("d", "n", "u", "r") if key in params})
    if params.get("w"):
        fields["w"] = _parse_number_text("w", params["w"])
    return validate_fields(fields)


def _parse_number_text(field: str, text: str) -> float:
    """A number written as JSON writes one (``1920``, ``-12.5``, ``1e3``): not Python's
    wider ``float()`` syntax (``1_000``, spaces, digits of other scripts, ``inf``)."""
    if not NUMBER_TEXT.fullmatch(text):
        raise InvalidEvent(400, f"{field} must be a number")
    return float(text)


def validate_fields(data: dict[str, Any]) -> EventInput:
    """Check a decoded event object field by field; unknown fields are ignored."""
    try:
        return _validate_fields(data)
    except InvalidEvent as error:
        error.site_id = _valid_site_id(data.get("d"))
        raise


def _valid_site_id(value: Any) -> str | None:
    if isinstance(value, str) and SITE_ID_PATTERN.fullmatch(value):
        return value.lower()
    return None


def _validate_fields(data: dict[str, Any]) -> EventInput:
    missing = [field for field in ("d", "n", "u") if data.get(field) is None]
    if missing:
        raise InvalidEvent(422, f"missing required field: {', '.join(missing)}")

    domain = _required_text(data, "d")
    if len(domain) > MAX_SITE_ID_LENGTH:
        raise InvalidEvent(
            400,
            f"d is longer than {MAX_SITE_ID_LENGTH} characters, the longest site id "
            "that can name its folder (site_id=<d>) on disk",
        )
    if not SITE_ID_PATTERN.fullmatch(domain):
        raise InvalidEvent(400, "d may contain only letters, digits, '.', '-', '_' and ':'")
    name = _required_text(data, "n")
    url = _required_text(data, "u")
    if not _is_absolute_url(url):
        raise InvalidEvent(400, "u must be an absolute URL such as https://example.com/page")

    revenue_amount, revenue_currency = _revenue(data)
    return EventInput(
        domain=domain.lower(),
        name=name,
        url=url,
        referrer=_optional_text(data, "r"),
        screen_width=_screen_width(data.get("w")),
        props=_props(data.get("p")),
        revenue_amount=revenue_amount,
        revenue_currency=revenue_currency,
        hash_mode=data.get("h") in (1, "1"),  # Plausible's hash-based routing flag
    )


def _check_unicode(field: str, text: str) -> None:
    """JSON escapes can smuggle in lone surrogates, which no UTF-8 file can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(400, f"{field} contains an invalid Unicode escape") from None


@functools.lru_cache(maxsize=8192)
def _is_absolute_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError unless a number from 0 to 65535
    except ValueError:
        return False
    return bool(parts.scheme and parts.hostname)


def _required_text(data: dict[str, Any], field: str) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise InvalidEvent(400, f"{field} must be a string")
    _check_unicode(field, value)
    if not value.strip():
        raise InvalidEvent(400, f"{field} must not be empty")
    if len(value) > MAX_LENGTH[field]:
        raise InvalidEvent(400, f"{field} exceeds {MAX_LENGTH[field]} characters")
    return value


def _optional_text(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(400, f"{field} must be a string")
    _check_unicode(field, value)
    if len(value) > MAX_LENGTH[field]:
        raise InvalidEvent(400, f"{field} exceeds {MAX_LENGTH[field]} characters")
    return value or None


def _finite_number(field: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(400, f"{field} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEvent(400, f"{field} must be a finite number")
    return value


def _screen_width(value: Any) -> int | None:
    if value is None:
        return None
    width = _finite_number("w", value)
    if width < 0 or width > MAX_SCREEN_WIDTH:
        raise InvalidEvent(400, f"w must be between 0 and {MAX_SCREEN_WIDTH} pixels")
    return int(width)


def _props(value: Any) -> str | None:
    """Props arrive as a JSON-encoded string (the spec) or an object (Plausible).

    The length limit applies to the text as sent; what is stored is the
    canonical JSON text of the object.
    """
    if value is None:
        return None
    sent_as_text = isinstance(value, str)
    if sent_as_text:
        if len(value) > MAX_LENGTH["p"]:
            raise InvalidEvent(400, f"p exceeds {MAX_LENGTH['p']} characters")
        if not value.strip():
            return None
        try:
            value = _loads(value)
        except ValueError:
            raise InvalidEvent(400, "p must be a JSON-encoded object") from None
    if not isinstance(value, dict):
        raise InvalidEvent(400, "p must be a JSON object")
    if not value:
        return None
    try:  # numbers too large for a float become Infinity, which JSON does not have
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidEvent(400, "p contains a number out of range") from None
    except RecursionError:
        raise InvalidEvent(400, "p nests too deeply") from None
    _check_unicode("p", text)
    if not sent_as_text and len(text) > MAX_LENGTH["p"]:
        raise InvalidEvent(400, f"p exceeds {MAX_LENGTH['p']} characters")
    return text


def _revenue(data: dict[str, Any]) -> tuple[Decimal | None, str | None]:
    """``ra``/``rc`` from the spec, or Plausible's ``revenue: {amount, currency}``."""
    amount: Any = data.get("ra")
    currency: Any = data.get("rc")
    field_amount, field_currency = "ra", "rc"
    plausible = data.get("revenue")
    if amount is None and currency is None and plausible is not None:
        if not isinstance(plausible, dict):
            raise InvalidEvent(400, "revenue must be an object with amount and currency")
        amount, currency = plausible.get("amount"), plausible.get("currency")
        field_amount, field_currency = "revenue.amount", "revenue.currency"
        if isinstance(amount, str):  # Plausible allows the amount as a decimal string
            amount = _parse_number_text(field_amount, amount)
    return _revenue_amount(field_amount, amount), _currency(field_currency, currency)


def _revenue_amount(field: str, value: Any) -> Decimal | None:
    if value is None:
        return None
    number = _finite_number(field, value)
    try:
        amount = Decimal(str(number)).quantize(CENTS, rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        raise InvalidEvent(400, f"{field} is out of range") from None
    if abs(amount) > MAX_REVENUE:
        raise InvalidEvent(400, f"{field} must be at most {MAX_REVENUE} in absolute value")
    return amount


def _currency(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(400, f"{field} must be a string")
    if len(value) > 3:
        raise InvalidEvent(400, f"{field} must be at most 3 characters")
    code = value.upper()
    try:
        iso4217.Currency(code)
    except ValueError:
        raise InvalidEvent(400, f"{field} must be an ISO 4217 currency code") from None
    return code
