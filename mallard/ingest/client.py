"""Which address is the client: the TCP peer, or what a trusted proxy says."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from mallard.config import Network


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.9:1234"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # "::ffff:127.0.0.1" from a dual-stack socket
    return address


def client_ip(
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    trusted_proxies: Sequence[Network],
) -> str | None:
    """The client's IP as text.

    The peer address is the answer unless the peer is inside ``trusted_proxies``;
    then the left-most ``X-Forwarded-For`` address (else ``X-Real-IP``) is.
    """
    peer_ip = _parse_ip(peer) if peer else None
    if peer_ip is None:
        return None
    if not any(peer_ip in network for network in trusted_proxies):
        return str(peer_ip)
    for header in (forwarded_for, real_ip):
        if header:
            forwarded = _parse_ip(header.split(",", 1)[0])
            if forwarded is not None:
                return str(forwarded)
    return str(peer_ip)
