"""Access-control routes: setup, login, users and roles, API keys, shared links.

Handlers only read the request, ask :mod:`mallard.auth.policy` and call the
store; refusals are :class:`~mallard.auth.service.Denied` errors, answered as
``{"error": …}`` JSON with their status.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from quart import Blueprint, Response, jsonify, request

from mallard.api.stats import refuse_repeated
from mallard.auth import passwords, policy
from mallard.auth.access import (
    SESSION_COOKIE,
    SHARE_COOKIE,
    account,
    check_csrf,
    clear_cookie,
    client_address,
    direct_loopback,
    identify,
    service,
    set_cookie,
)
from mallard.auth.policy import Principal, User
from mallard.auth.service import INVITE_TTL, Denied
from mallard.auth.store import ApiKey, DuplicateUser, NewSession, SharedLink
from mallard.query.model import QueryError, load_json, validate_site_id

blueprint = Blueprint("auth", __name__)


@blueprint.before_request
async def refuse_repeated_parameters() -> None:
    try:
        refuse_repeated(request.args)
    except QueryError as error:
        raise Denied(400, str(error)) from None


USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MAX_NAME_LENGTH = 200
ROLES_EXAMPLE = '{"example.com": "viewer"}'


@blueprint.app_errorhandler(Denied)
async def denied(error: Denied) -> Any:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="mallard"'
    return jsonify({"error": error.message, **error.extra}), error.status, headers


@blueprint.before_app_serving
async def open_store() -> None:
    await service().start()


@blueprint.after_app_serving
async def close_store() -> None:
    service().close()


@blueprint.after_request
async def not_cached(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


ROW_ID = f"int(max={2**63 - 1})"  # a row id in a URL: SQLite's INTEGER holds no more


# --- reading the request ---------------------------------------------------------


async def _body() -> dict[str, Any]:
    """The JSON object of the request: UTF-8 without lone surrogates, not too deep."""
    body = None
    if request.is_json:
        try:
            body = load_json(await request.get_data(), "the body")
        except QueryError as error:
            raise Denied(400, str(error)) from None
    if not isinstance(body, dict):
        raise Denied(400, "send a JSON object with Content-Type: application/json")
    return body


def _text(
    body: dict[str, Any], name: str, default: str | None = None, longest: int = MAX_NAME_LENGTH
) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value or len(value) > longest:
        raise Denied(400, f"{name} must be a string of 1 to {longest} characters")
    return value


def _password(body: dict[str, Any], name: str = "password") -> str:
    """A password to check (not a new one: that is :func:`_new_password`)."""
    return _text(body, name, longest=passwords.MAX_LENGTH)


def _new_password(body: dict[str, Any], name: str = "password") -> str:
    try:
        return passwords.check_new_password(body.get(name))
    except passwords.WeakPassword as error:
        raise Denied(400, f"{name}: {error}") from None


def _site(value: Any) -> str:
    try:
        return validate_site_id(value)
    except QueryError as error:
        raise Denied(400, str(error)) from None


def _role(value: Any) -> str:
    if value not in policy.ROLES:
        raise Denied(400, f"role must be one of {', '.join(policy.ROLES)}")
    return value


def _roles(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Denied(400, f"roles must be an object of site ids to roles, e.g. {ROLES_EXAMPLE}")
    return {_site(site): _role(role) for site, role in value.items()}


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "scope": key.scope,
        "prefix": key.shown,
        "user": key.username,
        "created_at": _iso(key.created_at),
    }


def _link_json(link: SharedLink) -> dict[str, Any]:
    return {
        "id": link.id,
        "site_id": link.site_id,
        "name": link.name,
        "password_protected": link.password_hash is not None,
        "created_at": _iso(link.created_at),
    }


async def _administrator() -> Principal:
    """An account that manages some site, through a session or an admin-scope key."""
    principal = await account()
    if principal.scope != "admin":
        raise Denied(403, "this API key has the read scope; this needs the admin scope")
    if not policy.may_administer(principal):
        raise Denied(403, "viewers may only read the stats of their sites")
    return principal


def _logged_in(user: User, session: NewSession, status: int = 200) -> Any:
    """The session's cookie, and the user and CSRF token for the dashboard."""
    response = jsonify(
        {
            "user": user.as_json(),
            "csrf_token": session.csrf_token,
            "expires_at": _iso(session.expires_at),
        }
    )
    set_cookie(response, SESSION_COOKIE, session)
    return response, status


# --- setup, login, logout, status --------------------------------------------------


@blueprint.get("/api/auth/status")
async def status() -> Any:
    """What the dashboard needs first: setup or login screen, who is logged in, the CSRF token."""
    auth = service()
    configured = await auth.configured()
    principal = await identify()
    if principal is None and not configured and direct_loopback():
        principal = policy.LOOPBACK
    answer: dict[str, Any] = {
        "setup_required": not configured,
        "access": principal.via if principal else None,
        "user": principal.user.as_json() if principal and principal.user else None,
        "csrf_token": principal.csrf_token if principal else None,
        "shared_link": None,
    }
    if principal is not None and principal.via == "api_key":
        answer["scope"] = principal.scope
    if principal is not None and principal.via == "shared_link":
        answer["shared_link"] = {"site_id": principal.site_id}
    return jsonify(answer)


@blueprint.post("/api/auth/setup")
async def setup() -> Any:
    """First run: the built-in admin's password, once, from this machine."""
    auth = service()
    if await auth.db(auth.store.builtin_password_hash) is not None:
        raise Denied(409, "the admin password is already set; log in instead")
    if not direct_loopback():
        raise Denied(
            403,
            "first-run setup is accepted only from this machine (loopback): open the dashboard "
            "through an SSH tunnel, or set MALLARD_ADMIN_PASSWORD",
        )
    password = _new_password(await _body())
    user = await auth.db(auth.store.claim_builtin_password, await auth.hash(password))
    if user is None:  # another request (or process) was first
        raise Denied(409, "the admin password is already set; log in instead")
    session = await auth.db(auth.new_session(user_id=user.id))
    return _logged_in(user, session, 201)


@blueprint.post("/api/auth/login")
async def login() -> Any:
    auth = service()
    body = await _body()
    username = _text(body, "username", default="admin")
    password = _password(body)
    if not await auth.configured():
        raise Denied(409, "no password is set yet: POST /api/auth/setup first")
    user, session = await auth.login(client_address(), username, password)
    return _logged_in(user, session)


@blueprint.post("/api/auth/logout")
async def logout() -> Any:
    """Ends this browser's session (CSRF token required) and drops its cookies."""
    auth = service()
    principal = await identify()
    if principal is not None and principal.via == "session":
        check_csrf(principal)
        assert principal.session is not None
        await auth.db(auth.store.delete_session, principal.session)
    response = Response("", status=204)
    clear_cookie(response, SESSION_COOKIE)
    clear_cookie(response, SHARE_COOKIE)
    return response


@blueprint.post("/api/auth/password")
async def change_password() -> Any:
    """One's own password; other sessions of the account end."""
    principal = await account()
    if principal.via != "session":
        raise Denied(403, "change your password while logged in, not with an API key")
    body = await _body()
    current = _password(body, "current_password")
    new = _new_password(body, "new_password")
    await service().change_password(client_address(), principal, current, new)
    return Response("", status=204)


@blueprint.post("/api/auth/accept-invite")
async def accept_invite() -> Any:
    """An invited user chooses a password and is logged in."""
    auth = service()
    body = await _body()
    token = _text(body, "token")
    password = _new_password(body)
    invalid = Denied(400, "this invite is invalid, already used or expired")
    if not await auth.db(auth.store.invite_valid, token):  # before the costly hash
        raise invalid
    user = await auth.db(auth.store.accept_invite, token, await auth.hash(password))
    if user is None:
        raise invalid
    return _logged_in(user, await auth.db(auth.new_session(user_id=user.id)))


@blueprint.post("/api/auth/shared-link")
async def unlock_shared_link() -> Any:
    """A password-protected shared link: its password sets the ``mallard_share`` cookie."""
    auth = service()
    body = await _body()
    token = _text(body, "token")
    password = _password(body)
    link = await auth.db(auth.store.link_by_token, token)
    if link is None:
        raise Denied(401, "this shared link is invalid or has been revoked")
    if link.password_hash is None:
        raise Denied(400, "this shared link has no password: send its token as X-Mallard-Share")
    session = await auth.unlock_link(client_address(), link, password)
    response = jsonify({"shared_link": {"site_id": link.site_id, "name": link.name}})
    set_cookie(response, SHARE_COOKIE, session)
    return response


# --- users and roles --------------------------------------------------------------


@blueprint.get("/api/users")
async def list_users() -> Any:
    """Superusers see everyone; site owners and admins the members of their sites."""
    principal = await _administrator()
    sites = policy.managed_sites(principal)
    users = await service().db(service().store.users)
    if sites is not None:
        users = [user for user in users if sites.intersection(user.roles)]
    return jsonify({"users": [user.as_json(sites) for user in users]})


@blueprint.post("/api/users")
async def create_user() -> Any:
    """A new account with roles; with ``password`` it can log in, else it gets an invite."""
    principal = await _administrator()
    auth = service()
    body = await _body()
    username = body.get("username")
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise Denied(400, "username must be 1 to 64 letters, digits, '.', '_', '@' or '-'")
    superuser = body.get("superuser", False)
    if not isinstance(superuser, bool):
        raise Denied(400, "superuser must be true or false")
    roles = _roles(body.get("roles", {}))
    password = _new_password(body) if body.get("password") is not None else None
    if superuser and not policy.is_superuser(principal):
        raise Denied(403, "only a superuser may create superusers")
    if not superuser and not roles:
        raise Denied(400, f"roles: give the user a role on a site, e.g. {ROLES_EXAMPLE}")
    for site, role in roles.items():
        if not policy.can_grant(principal, site, role):
            raise Denied(403, f"you may not grant {role} on {site}")
    password_hash = await auth.hash(password) if password is not None else None
    try:
        user = await auth.db(auth.store.create_user, username, password_hash, superuser, roles)
    except DuplicateUser:
        raise Denied(409, f"username {username!r} is taken") from None
    answer: dict[str, Any] = {"user": user.as_json()}
    if password is None:
        token, expires_at = await auth.db(auth.store.create_invite, user.id, INVITE_TTL)
        answer["invite"] = {"token": token, "expires_at": _iso(expires_at)}
    return jsonify(answer), 201


async def _member(principal: Principal, user_id: int, site_id: str) -> tuple[User, str | None]:
    """The user whose role on ``site_id`` is to change, once ``principal`` may manage the site."""
    if not policy.can_manage_site(principal, site_id):
        raise Denied(403, f"you do not manage {site_id}")
    user = await service().db(service().store.user, user_id)
    if user is None:
        raise Denied(404, f"no user {user_id}")
    if user.superuser:
        raise Denied(409, f"user {user_id} is a superuser: owner of every site, no role to change")
    return user, user.roles.get(site_id)


@blueprint.put(f"/api/users/<{ROW_ID}:user_id>/roles/<site_id>")
async def grant_role(user_id: int, site_id: str) -> Any:
    principal = await _administrator()
    site = _site(site_id)
    role = _role((await _body()).get("role"))
    _, current = await _member(principal, user_id, site)
    if not (policy.can_grant(principal, site, role) and policy.can_grant(principal, site, current)):
        raise Denied(403, f"you may not grant {role} on {site}")
    await service().db(service().store.set_role, user_id, site, role)
    return await _user_answer(principal, user_id)


@blueprint.delete(f"/api/users/<{ROW_ID}:user_id>/roles/<site_id>")
async def revoke_role(user_id: int, site_id: str) -> Any:
    principal = await _administrator()
    site = _site(site_id)
    _, current = await _member(principal, user_id, site)
    if current is None:
        raise Denied(404, f"user {user_id} has no role on {site}")
    if not policy.can_grant(principal, site, current):
        raise Denied(403, f"you may not take {current} on {site} away")
    await service().db(service().store.set_role, user_id, site, None)
    return await _user_answer(principal, user_id)


async def _user_answer(principal: Principal, user_id: int) -> Any:
    user = await service().db(service().store.user, user_id)
    assert user is not None
    return jsonify({"user": user.as_json(policy.managed_sites(principal))})


@blueprint.delete(f"/api/users/<{ROW_ID}:user_id>")
async def delete_user(user_id: int) -> Any:
    """Superusers only; the account's sessions, keys and invites go with it."""
    principal = await account()
    if not policy.is_superuser(principal):
        raise Denied(403, "only a superuser may delete accounts")
    auth = service()
    user = await auth.db(auth.store.user, user_id)
    if user is None:
        raise Denied(404, f"no user {user_id}")
    if not policy.can_delete_user(principal, user):
        raise Denied(403, "the built-in admin and your own account cannot be deleted")
    await auth.db(auth.store.delete_user, user_id)
    return Response("", status=204)


# --- API keys ---------------------------------------------------------------------


@blueprint.get("/api/keys")
async def list_keys() -> Any:
    """One's own keys (a superuser's: every key), without the secret part."""
    principal = await account()
    if principal.scope != "admin":
        raise Denied(403, "this API key has the read scope; this needs the admin scope")
    assert principal.user is not None
    owner = None if policy.is_superuser(principal) else principal.user.id
    keys = await service().db(service().store.keys, owner)
    return jsonify({"keys": [_key_json(key) for key in keys]})


@blueprint.post("/api/keys")
async def create_key() -> Any:
    """A key acting for the caller, ``read`` or ``admin`` scope; the key is shown only here."""
    principal = await _administrator()
    assert principal.user is not None
    body = await _body()
    name = _text(body, "name", default="API key")
    scope = body.get("scope", "read")
    if scope not in policy.SCOPES:
        raise Denied(400, f"scope must be one of {', '.join(policy.SCOPES)}")
    key, info = await service().db(service().store.create_key, principal.user.id, name, scope)
    return jsonify({**_key_json(info), "key": key}), 201


@blueprint.delete(f"/api/keys/<{ROW_ID}:key_id>")
async def revoke_key(key_id: int) -> Any:
    principal = await account()
    if principal.scope != "admin":
        raise Denied(403, "this API key has the read scope; this needs the admin scope")
    auth = service()
    key = await auth.db(auth.store.key_by_id, key_id)
    if key is None or not policy.can_manage_key(principal, key.user_id):
        raise Denied(404, f"no API key {key_id} of yours")
    await auth.db(auth.store.delete_key, key_id)
    return Response("", status=204)


# --- shared links -----------------------------------------------------------------


@blueprint.get("/api/shared-links")
async def list_links() -> Any:
    """The links of the sites one manages (``site_id`` to narrow to one)."""
    principal = await _administrator()
    sites = policy.managed_sites(principal)
    if "site_id" in request.args:
        site = _site(request.args["site_id"])
        if not policy.can_manage_site(principal, site):
            raise Denied(403, f"you do not manage {site}")
        sites = frozenset({site})
    links = await service().db(service().store.links, sites)
    return jsonify({"shared_links": [_link_json(link) for link in links]})


@blueprint.post("/api/shared-links")
async def create_link() -> Any:
    """A read-only link to one site's dashboard, optionally with a password."""
    principal = await _administrator()
    auth = service()
    body = await _body()
    site = _site(body.get("site_id"))
    if not policy.can_manage_site(principal, site):
        raise Denied(403, f"you do not manage {site}")
    name = _text(body, "name", default=site)
    password = _new_password(body) if body.get("password") is not None else None
    password_hash = await auth.hash(password) if password is not None else None
    token, link = await auth.db(auth.store.create_link, site, name, password_hash)
    return jsonify({**_link_json(link), "token": token}), 201


@blueprint.delete(f"/api/shared-links/<{ROW_ID}:link_id>")
async def revoke_link(link_id: int) -> Any:
    principal = await _administrator()
    auth = service()
    link = await auth.db(auth.store.link_by_id, link_id)
    if link is None:
        raise Denied(404, f"no shared link {link_id}")
    if not policy.can_manage_site(principal, link.site_id):
        raise Denied(403, f"you do not manage {link.site_id}")
    await auth.db(auth.store.delete_link, link_id)
    return Response("", status=204)
