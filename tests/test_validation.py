"""The seed's validation table, checked on the pure parsing functions."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from mallard.ingest.validation import (
    EventInput,
    InvalidEvent,
    parse_batch,
    parse_body,
    parse_query,
    validate_fields,
)
from tests.factories import SEED_EXAMPLE

BASE: dict[str, Any] = {"d": "example.com", "n": "pageview", "u": "https://example.com/pricing"}
URL_PREFIX = "https://example.com/"


def body(**fields: Any) -> bytes:
    """A JSON body: BASE with ``fields`` replaced (a value of ``...`` removes the field)."""
    data = {**BASE, **fields}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def status_of(call: Any, *args: Any) -> int:
    with pytest.raises(InvalidEvent) as info:
        call(*args)
    return info.value.status


def url_of_length(length: int) -> str:
    return URL_PREFIX + "a" * (length - len(URL_PREFIX))


def test_seed_example_body_is_accepted() -> None:
    seed = SEED_EXAMPLE
    assert parse_body(json.dumps(seed).encode()) == EventInput(
        domain="example.com",
        name="pageview",
        url="https://example.com/pricing",
        referrer="https://google.com/",
        screen_width=1920,
        props='{"plan":"pro"}',
        revenue_amount=Decimal("99.00"),
        revenue_currency="USD",
    )


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        # missing required field -> 422 (absent or null)
        ({"d": ...}, 422),
        ({"n": ...}, 422),
        ({"u": ...}, 422),
        ({"d": None}, 422),
        ({"n": None}, 422),
        ({"u": None}, 422),
        ({"d": ..., "n": ..., "u": ...}, 422),
        # empty -> 400
        ({"d": ""}, 400),
        ({"n": ""}, 400),
        ({"u": ""}, 400),
        ({"n": "   "}, 400),
        # d: invalid characters or too long
        ({"d": "exa mple.com"}, 400),
        ({"d": "example.com/path"}, 400),
        ({"d": "<script>"}, 400),
        ({"d": "exämple.com"}, 400),
        ({"d": "a" * 257}, 400),
        ({"d": "a" * 248}, 400),  # site_id=<d> would be longer than a file name may be
        # length limits
        ({"n": "e" * 257}, 400),
        ({"u": url_of_length(2049)}, 400),
        ({"r": url_of_length(2049)}, 400),
        ({"p": json.dumps({"k": "v" * 4100})}, 400),
        ({"p": {"k": "v" * 4100}}, 400),
        # wrong types
        ({"w": "wide"}, 400),
        ({"w": True}, 400),
        ({"d": 42}, 400),
        ({"n": ["pageview"]}, 400),
        ({"u": {"href": "https://example.com/"}}, 400),
        ({"r": 5}, 400),
        ({"ra": "99.00"}, 400),
        ({"ra": True}, 400),
        ({"rc": 840}, 400),
        ({"rc": ["USD"]}, 400),
        ({"p": 5}, 400),
        ({"p": "[1, 2]"}, 400),
        ({"p": "not json"}, 400),
        ({"p": ["plan"]}, 400),
        # currency
        ({"ra": 1, "rc": "USDX"}, 400),
        ({"ra": 1, "rc": "ABC"}, 400),
        ({"ra": 1, "rc": "US"}, 400),
        # screen width
        ({"w": -1}, 400),
        ({"w": 10**9}, 400),
        ({"w": 1e300}, 400),
        # revenue out of DECIMAL(12,2)
        ({"ra": 1e10}, 400),
        ({"ra": 1e30}, 400),
        # u must be absolute with a host
        ({"u": "example.com/pricing"}, 400),
        ({"u": "/pricing"}, 400),
        ({"u": "https://"}, 400),
        ({"u": "javascript:alert(1)"}, 400),
        ({"u": "http://[::1/broken"}, 400),
        ({"u": "https://example.com:99999/pricing"}, 400),
        ({"u": "https://example.com:https/pricing"}, 400),
    ],
)
def test_invalid_body_field(fields: dict[str, Any], status: int) -> None:
    assert status_of(parse_body, body(**fields)) == status


def test_missing_field_wins_over_invalid_field() -> None:
    assert status_of(validate_fields, {"d": "", "u": "nope"}) == 422


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b"{'d': 'example.com'}",
        b"[]",
        b'[{"d": "example.com", "n": "pageview", "u": "https://example.com/"}]',
        b'"example.com"',
        b"42",
        b"null",
        b"true",
        b"\xff\xfe\x00",
        b'{"d": "example.com", "n": "caf\xe9", "u": "https://example.com/"}',
        body()[:-1] + b', "w": NaN}',
        body()[:-1] + b', "w": Infinity}',
        body()[:-1] + b', "ra": -Infinity}',
        body()[:-1] + b', "p": {"x": NaN}}',
        body(p='{"x": NaN}'),
        body(p='{"x": Infinity}'),
    ],
    ids=lambda raw: raw.decode("utf-8", "replace")[-24:],
)
def test_unparseable_body_is_400(raw: bytes) -> None:
    assert status_of(parse_body, raw) == 400


DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    "raw",
    [
        DEEP.encode(),
        body()[:-1] + f', "x": {DEEP}}}'.encode(),
        body(p="[" * 2000 + "]" * 2000),  # within the length limit
        body()[:-1] + b', "p": ' + b'{"a": ' * 990 + b"1" + b"}" * 990 + b"}",
    ],
    ids=["body", "unknown-field", "p-text", "p-object"],
)
def test_json_nested_too_deeply_is_400(raw: bytes) -> None:
    assert status_of(parse_body, raw) == 400


def test_batch_nested_too_deeply_is_400_or_an_invalid_line() -> None:
    assert status_of(parse_batch, DEEP.encode()) == 400
    [line] = parse_batch(f'{{"x": {DEEP}}}\n'.encode())  # one NDJSON line
    assert isinstance(line, InvalidEvent) and line.status == 400


def test_ndjson_lines_end_at_newlines_only() -> None:
    event = json.dumps({**BASE, "n": "a\u2028b\x85c"}, ensure_ascii=False)
    [parsed] = parse_batch(event.encode())
    assert isinstance(parsed, EventInput) and parsed.name == "a\u2028b\x85c"


@pytest.mark.parametrize(
    "raw",
    [
        body(p='{"x": 1e400}'),
        body(p='{"x": -1e400}'),
        body()[:-1] + b', "p": {"x": 1e400}}',
    ],
    ids=["p-string-inf", "p-string-minus-inf", "p-object-inf"],
)
def test_overflowing_number_inside_p_is_400(raw: bytes) -> None:
    # 1e400 parses to float('inf'); stored as '{"x":Infinity}' it is no longer JSON.
    assert status_of(parse_body, raw) == 400


@pytest.mark.parametrize("field", ["n", "u", "r", "p"])
def test_lone_surrogate_escape_is_400(field: str) -> None:
    # "\ud800" is valid JSON syntax but not a Unicode string: it cannot be encoded as
    # UTF-8, so an accepted event carrying it could never be written to Parquet.
    values = {
        "n": "sign\\ud800up",
        "u": "https://example.com/\\ud800",
        "r": "https://ref.example/\\ud800",
        "p": '{\\"k\\": \\"\\ud800\\"}',
    }
    fields = {key: value for key, value in BASE.items() if key != field}
    raw = json.dumps(fields)[:-1] + f', "{field}": "{values[field]}"}}'
    with pytest.raises(InvalidEvent) as refused:
        parse_body(raw.encode())
    assert refused.value.status == 400
    assert "\\uD800-\\uDBFF escape lacks" in refused.value.message


@pytest.mark.parametrize(
    ("fields", "attribute", "expected"),
    [
        ({"d": "a" * 247}, "domain", "a" * 247),
        ({"d": "Sub_Domain-1.Example.com:8080"}, "domain", "sub_domain-1.example.com:8080"),
        ({"n": "e" * 256}, "name", "e" * 256),
        ({"u": url_of_length(2048)}, "url", url_of_length(2048)),
        ({"r": url_of_length(2048)}, "referrer", url_of_length(2048)),
        ({"r": ""}, "referrer", None),
        ({"w": 0}, "screen_width", 0),
        ({"w": 1920.7}, "screen_width", 1920),
        ({"w": 100_000}, "screen_width", 100_000),
        ({"ra": 99}, "revenue_amount", Decimal("99.00")),
        ({"ra": 12.345}, "revenue_amount", Decimal("12.34")),
        ({"ra": -5.5}, "revenue_amount", Decimal("-5.50")),
        ({"ra": 9999999999.99}, "revenue_amount", Decimal("9999999999.99")),
        ({"rc": "eur"}, "revenue_currency", "EUR"),
        ({"rc": "JPY"}, "revenue_currency", "JPY"),
        ({"p": ""}, "props", None),
        ({"p": "{}"}, "props", None),
        ({"p": {}}, "props", None),
        ({"h": 1}, "hash_mode", True),
        ({"h": 0}, "hash_mode", False),
    ],
)
def test_accepted_values(fields: dict[str, Any], attribute: str, expected: Any) -> None:
    assert getattr(parse_body(body(**fields)), attribute) == expected


def test_p_of_exactly_4096_characters_is_accepted() -> None:
    p = '{"k": "' + "v" * (4096 - len('{"k": ""}')) + '"}'
    assert len(p) == 4096
    assert parse_body(body(p=p)).props == '{"k":"' + "v" * (4096 - 9) + '"}'


def test_p_of_4096_characters_is_accepted_whatever_its_canonical_form() -> None:
    # The limit is on the p field as sent; re-serialising 1E5 as 100000.0 must not
    # push a 4096-character value over it.
    tail = ', "n": 1E5}'
    p = '{"k": "' + "v" * (4096 - len('{"k": "') - 1 - len(tail)) + '"' + tail
    assert len(p) == 4096
    assert parse_body(body(p=p)).props is not None


@pytest.mark.parametrize(
    "p",
    [
        '{"plan": "pro", "seats": 3, "nested": {"a": [1, 2]}}',
        '{ "plan" : "pro" ,\n "seats" : 3 , "nested" : { "a" : [ 1 , 2 ] } }',
        {"plan": "pro", "seats": 3, "nested": {"a": [1, 2]}},
    ],
)
def test_p_string_and_object_are_stored_as_the_same_canonical_json(p: Any) -> None:
    props = parse_body(body(p=p)).props
    assert props == '{"plan":"pro","seats":3,"nested":{"a":[1,2]}}'
    assert json.loads(props) == {"plan": "pro", "seats": 3, "nested": {"a": [1, 2]}}


def test_p_keeps_non_ascii_text() -> None:
    assert parse_body(body(p={"city": "Zürich"})).props == '{"city":"Zürich"}'


@pytest.mark.parametrize(
    ("revenue", "amount", "currency"),
    [
        ({"amount": 12.5, "currency": "EUR"}, Decimal("12.50"), "EUR"),
        ({"amount": "12.5", "currency": "eur"}, Decimal("12.50"), "EUR"),
        ({"amount": "1999.999", "currency": "USD"}, Decimal("2000.00"), "USD"),
        ({"amount": 7}, Decimal("7.00"), None),
    ],
)
def test_plausible_revenue_object(
    revenue: dict[str, Any], amount: Decimal, currency: str | None
) -> None:
    event = parse_body(body(revenue=revenue))
    assert (event.revenue_amount, event.revenue_currency) == (amount, currency)


@pytest.mark.parametrize(
    "revenue",
    [
        "12.50 EUR",
        {"amount": "twelve", "currency": "EUR"},
        {"amount": "nan", "currency": "EUR"},
        {"amount": "1_000", "currency": "EUR"},
        {"amount": " 5 ", "currency": "EUR"},
        {"amount": "\u0665", "currency": "EUR"},  # an Arabic-Indic 5
        {"amount": "", "currency": "EUR"},
        {"amount": 10, "currency": "EURO"},
        {"amount": 10, "currency": "ZZZ"},
    ],
)
def test_invalid_plausible_revenue_is_400(revenue: Any) -> None:
    assert status_of(parse_body, body(revenue=revenue)) == 400


def test_ra_and_rc_take_precedence_over_revenue_object() -> None:
    event = parse_body(body(ra=1, rc="USD", revenue={"amount": 2, "currency": "EUR"}))
    assert (event.revenue_amount, event.revenue_currency) == (Decimal("1.00"), "USD")


def test_unknown_fields_are_ignored() -> None:
    extra = parse_body(body(x="y", extra={"nested": [1]}, props="ignored", timestamp=1))
    assert extra == parse_body(body())


def test_validate_fields_directly() -> None:
    event = validate_fields({"d": "Example.COM", "n": "signup", "u": "https://example.com/"})
    assert (event.domain, event.name, event.url) == (
        "example.com",
        "signup",
        "https://example.com/",
    )
    assert event.referrer is event.props is event.screen_width is None


# --- GET /api/event query strings ---


def test_query_defaults_name_to_pageview() -> None:
    event = parse_query("d=example.com&u=https%3A%2F%2Fexample.com%2Fpage")
    assert (event.domain, event.name, event.url) == (
        "example.com",
        "pageview",
        "https://example.com/page",
    )


def test_query_reads_every_field_and_parses_w_from_text() -> None:
    event = parse_query(
        b"d=example.com&n=open&u=https://example.com/mail&r=https://mail.example/&w=1280"
    )
    assert event == EventInput(
        domain="example.com",
        name="open",
        url="https://example.com/mail",
        referrer="https://mail.example/",
        screen_width=1280,
    )


def test_query_ignores_revenue_and_props() -> None:
    event = parse_query("d=example.com&u=https://example.com/&ra=5&rc=USD&p=%7B%22a%22%3A1%7D")
    assert (event.revenue_amount, event.revenue_currency, event.props) == (None, None, None)


def test_query_empty_w_is_no_width() -> None:
    assert parse_query("d=example.com&u=https://example.com/&w=").screen_width is None


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("u=https://example.com/", 422),
        ("d=example.com", 422),
        ("", 422),
        ("d=&u=https://example.com/", 400),
        ("d=example.com&u=", 400),
        ("d=bad%20site&u=https://example.com/", 400),
        ("d=example.com&u=example.com/page", 400),
        ("d=example.com&u=https://example.com/&w=abc", 400),
        ("d=example.com&u=https://example.com/&w=-5", 400),
        ("d=example.com&u=https://example.com/&w=nan", 400),
        ("d=example.com&u=https://example.com/&w=inf", 400),
        ("d=example.com&u=https://example.com/&w=1e9", 400),
        ("d=example.com&u=https://example.com/&w=1_0", 400),
        ("d=example.com&u=https://example.com/&w=%2010", 400),
        ("d=example.com&u=https://example.com/&w=%D9%A5", 400),  # an Arabic-Indic 5
        ("d=example.com&u=https://example.com/&w=0x10", 400),
        ("d=example.com&n=" + "e" * 257 + "&u=https://example.com/", 400),
        (b"d=example.com&u=https://example.com/\xff", 400),
    ],
)
def test_invalid_query(query: str | bytes, status: int) -> None:
    assert status_of(parse_query, query) == status
