"""Who is asking, for the Quart routes: credentials, CSRF, and the guards routes call.

Credentials, in the order they are looked at:

1. an API key: ``Authorization: Bearer mm_…`` or ``X-API-Key: mm_…``;
2. a shared-link token: ``X-Mallard-Share: …`` or ``?auth=…`` (a password-protected
   link also needs the ``mallard_share`` cookie from ``POST /api/auth/shared-link``);
3. the ``mallard_session`` cookie of a login (then the ``mallard_share`` cookie).

A credential that is presented but wrong is refused (401) rather than ignored.
A state-changing request authenticated by the session cookie must carry the
session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from quart import Response, current_app, g, request

from mallard.auth.lockout import client_key
from mallard.auth.policy import LOOPBACK, Principal, can_read
from mallard.auth.service import AuthService, Denied
from mallard.auth.store import NewSession, Session
from mallard.ingest.client import client_ip
from mallard.query.model import QueryError, load_json, validate_site_id

SESSION_COOKIE = "mallard_session"
SHARE_COOKIE = "mallard_share"
SHARE_HEADER = "X-Mallard-Share"
SHARE_PARAMETER = "auth"
KEY_HEADER = "X-API-Key"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


def service() -> AuthService:
    return current_app.config["MALLARD_AUTH"]


def client_address() -> str:
    """The client address the lockout counts against (kept in memory only)."""
    return client_key(
        _peer(),
        request.headers.get("X-Forwarded-For"),
        request.headers.get("X-Real-IP"),
        service().settings.trusted_proxies,
    )


def direct_loopback() -> bool:
    """A client on this machine, not relayed by a proxy (which could be relaying anyone)."""
    if any(header in request.headers for header in FORWARDING_HEADERS):
        return False
    peer = client_ip(_peer(), None, None, ())
    return peer is not None and ipaddress.ip_address(peer).is_loopback


def _peer() -> str:
    return (request.scope.get("client") or ("",))[0]


def _presented_key() -> str | None:
    key = request.headers.get(KEY_HEADER)
    if key is not None:
        return key.strip()
    authorization = request.headers.get("Authorization")
    if authorization is None:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Denied(401, "send an API key as 'Authorization: Bearer mm_…' or 'X-API-Key'")
    return value.strip()


async def _cookie_session(name: str) -> Session | None:
    token = request.cookies.get(name)
    return await service().session(token) if token else None


async def _shared_link(token: str) -> Principal:
    auth = service()
    link = await auth.db(auth.store.link_by_token, token)
    if link is None:
        raise Denied(401, "this shared link is invalid or has been revoked")
    if link.password_hash is not None:
        unlocked = await _cookie_session(SHARE_COOKIE)
        if unlocked is None or unlocked.link is None or unlocked.link.id != link.id:
            raise Denied(
                401,
                "this shared link is password protected: POST its token and password "
                "to /api/auth/shared-link first",
                password_required=True,
            )
    return Principal(via="shared_link", scope="read", site_id=link.site_id)


def _from_session(session: Session) -> Principal:
    if session.user is not None:
        return Principal(
            via="session",
            user=session.user,
            session=session.token_hash,
            csrf_token=session.csrf_token,
        )
    assert session.link is not None
    return Principal(via="shared_link", scope="read", site_id=session.link.site_id)


async def identify() -> Principal | None:
    """The checked credentials of this request, or None when it presents none."""
    auth = service()
    key = _presented_key()
    if key is not None:
        found = await auth.db(auth.store.key_user, key)
        if found is None:
            raise Denied(401, "unknown or revoked API key")
        user, scope = found
        return Principal(via="api_key", user=user, scope=scope)
    share = request.headers.get(SHARE_HEADER) or request.args.get(SHARE_PARAMETER)
    if share:
        return await _shared_link(share)
    for cookie in (SESSION_COOKIE, SHARE_COOKIE):
        session = await _cookie_session(cookie)
        if session is not None:
            return _from_session(session)
    return None


def check_csrf(principal: Principal) -> None:
    """Cookie-authenticated state changes must echo the session's CSRF token."""
    if principal.via != "session" or request.method not in UNSAFE_METHODS:
        return
    supplied = request.headers.get(CSRF_HEADER, "").encode()
    if not hmac.compare_digest(supplied, (principal.csrf_token or "").encode()):
        raise Denied(403, f"missing or wrong {CSRF_HEADER} header (login and status return it)")


def _no_credentials() -> Denied:
    return Denied(401, "authentication required: log in, or send an API key")


async def authenticated() -> Principal:
    """Any valid credentials (CSRF checked), else 401."""
    principal = await identify()
    if principal is None:
        raise _no_credentials()
    check_csrf(principal)
    return principal


async def account() -> Principal:
    """A user's session or API key; shared links are read-only and get 403."""
    principal = await authenticated()
    if principal.user is None:
        raise Denied(403, "a shared link can only read its site's stats")
    return principal


async def reader(site_id: str | None, *, shared_links: bool = True) -> Principal:
    """May this request read ``site_id``? Loopback clients may while no password exists.

    ``site_id`` None (missing or malformed) lets the route answer its own 400.
    """
    principal = await identify()
    if principal is None:
        if await service().configured():
            raise _no_credentials()
        if not direct_loopback():
            raise Denied(
                403,
                "no password is set yet, so only this machine (loopback) may read stats; "
                "set admin_password or POST /api/auth/setup from this machine",
            )
        principal = LOOPBACK
    check_csrf(principal)
    if principal.via == "shared_link" and not shared_links:
        raise Denied(403, "a shared link cannot do this; log in or use an API key")
    if site_id is not None and not can_read(principal, site_id):
        raise Denied(403, f"no access to site {site_id!r}")
    return principal


def set_cookie(response: Response, name: str, session: NewSession) -> None:
    response.set_cookie(
        name,
        session.token,
        max_age=max(1, int(service().settings.session_ttl)),
        httponly=True,
        secure=service().settings.cookie_secure,
        samesite="Strict",
        path="/",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(
        name, httponly=True, secure=service().settings.cookie_secure, samesite="Strict", path="/"
    )


async def json_body() -> Any:
    """The request's body as JSON, parsed once per request (a QueryError if it is not)."""
    if "json_body" not in g:
        g.json_body = load_json(await request.get_data(), "the body")
    return g.json_body


async def requested_site() -> str | None:
    """The ``site_id`` a stats request asks about: from the JSON body of a POST, else the URL.

    Normalised as the query model does, so that the site checked is the site read.
    """
    try:
        if request.method == "POST":  # a body that is no JSON object is the route's to refuse
            body = await json_body()
            raw = body.get("site_id") if isinstance(body, dict) else None
        else:
            raw = request.args.get("site_id")
        return validate_site_id(raw)
    except QueryError:
        return None
