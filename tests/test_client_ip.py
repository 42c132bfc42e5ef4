"""Which address is the client, and whether an Origin may send events."""

from __future__ import annotations

import ipaddress

import pytest

from mallard.config import Settings
from mallard.ingest.client import client_ip
from mallard.ingest.pipeline import origin_allowed

DEFAULT_TRUSTED = Settings().trusted_proxies
MIXED_TRUSTED = (
    ipaddress.ip_network("2001:db8:ffff::/48"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("10.0.0.0/8"),
)
V6_ONLY = (ipaddress.ip_network("fd00::/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(
    ("peer", "xff", "real_ip", "trusted", "expected"),
    [
        # untrusted peer: headers are ignored
        ("198.51.100.4", "203.0.113.9", "203.0.113.10", DEFAULT_TRUSTED, "198.51.100.4"),
        ("198.51.100.4", None, None, DEFAULT_TRUSTED, "198.51.100.4"),
        ("198.51.100.4", "203.0.113.9", None, (), "198.51.100.4"),
        ("127.0.0.1", "203.0.113.9", None, (), "127.0.0.1"),
        # trusted peer: left-most X-Forwarded-For, else X-Real-IP, else the peer
        ("127.0.0.1", "203.0.113.9, 10.0.0.2, 127.0.0.1", None, DEFAULT_TRUSTED, "203.0.113.9"),
        ("127.0.0.5", "203.0.113.9", "203.0.113.10", DEFAULT_TRUSTED, "203.0.113.9"),
        ("127.0.0.1", None, "203.0.113.10", DEFAULT_TRUSTED, "203.0.113.10"),
        ("127.0.0.1", "", "203.0.113.10", DEFAULT_TRUSTED, "203.0.113.10"),
        ("127.0.0.1", None, None, DEFAULT_TRUSTED, "127.0.0.1"),
        ("127.0.0.1", " 203.0.113.9 ", None, DEFAULT_TRUSTED, "203.0.113.9"),
        ("127.0.0.1", "203.0.113.9:4711", None, DEFAULT_TRUSTED, "203.0.113.9"),
        # junk header values are ignored
        ("127.0.0.1", "unknown", "203.0.113.10", DEFAULT_TRUSTED, "203.0.113.10"),
        ("127.0.0.1", "not-an-ip, 203.0.113.9", None, DEFAULT_TRUSTED, "127.0.0.1"),
        ("127.0.0.1", "999.1.1.1", "garbage", DEFAULT_TRUSTED, "127.0.0.1"),
        ("127.0.0.1", "<script>", "", DEFAULT_TRUSTED, "127.0.0.1"),
        # IPv6 peers and forwarded IPv6 addresses
        ("::1", "2001:db8::42", None, DEFAULT_TRUSTED, "2001:db8::42"),
        ("::1", "[2001:db8::42]:443", None, DEFAULT_TRUSTED, "2001:db8::42"),
        ("::1", None, "2001:DB8:0::42", DEFAULT_TRUSTED, "2001:db8::42"),
        ("2001:db8::99", "203.0.113.9", None, DEFAULT_TRUSTED, "2001:db8::99"),
        ("[2001:db8::99]:5000", None, None, DEFAULT_TRUSTED, "2001:db8::99"),
        ("2001:db8:ffff::1", "203.0.113.9", None, MIXED_TRUSTED, "203.0.113.9"),
        ("fd12::1", "2001:db8::5", None, V6_ONLY, "2001:db8::5"),
        # an IPv4 peer checked against a list holding IPv6 networks
        ("10.1.2.3", "203.0.113.9", None, MIXED_TRUSTED, "203.0.113.9"),
        ("192.0.2.1", "203.0.113.9", None, MIXED_TRUSTED, "192.0.2.1"),
        ("192.0.2.1", "203.0.113.9", None, V6_ONLY, "192.0.2.1"),
        # a peer given with its port
        ("198.51.100.4:51234", None, None, DEFAULT_TRUSTED, "198.51.100.4"),
        # no usable peer
        (None, "203.0.113.9", None, DEFAULT_TRUSTED, None),
        ("", None, None, DEFAULT_TRUSTED, None),
        ("/run/mallard.sock", "203.0.113.9", None, DEFAULT_TRUSTED, None),
    ],
)
def test_client_ip(
    peer: str | None,
    xff: str | None,
    real_ip: str | None,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    expected: str | None,
) -> None:
    assert client_ip(peer, xff, real_ip, trusted) == expected


@pytest.mark.parametrize(
    ("origin", "site_ids", "allowed"),
    [
        ("https://evil.com", (), True),
        (None, ("example.com",), True),
        ("https://example.com", ("example.com",), True),
        ("https://example.com:8443", ("example.com",), True),
        ("http://EXAMPLE.com", ("example.com",), True),
        ("https://shop.example.org", ("example.com", "shop.example.org"), True),
        ("https://example.com.evil.com", ("example.com",), False),
        ("https://evilexample.com", ("example.com",), False),
        ("https://sub.example.com", ("example.com",), False),
        ("null", ("example.com",), False),
        ("", ("example.com",), False),
        ("example.com", ("example.com",), False),
        ("http://[::1", ("example.com",), False),
    ],
)
def test_origin_allowed(origin: str | None, site_ids: tuple[str, ...], allowed: bool) -> None:
    assert origin_allowed(origin, site_ids) is allowed
