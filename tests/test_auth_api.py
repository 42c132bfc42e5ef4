"""Access control end to end, against real servers: setup, login, lockout, expiry, users
and roles, invites, API keys and scopes, shared links, CSRF, and every protected route."""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mallard.api.app import create_app
from mallard.api.auth import ROW_ID
from mallard.config import Settings
from tests.conftest import RunningServer, start_process

PASSWORD = "correct horse battery"
A, B = "a.example", "b.example"
PROXIED = {"X-Forwarded-For": "203.0.113.5"}  # as relayed by a proxy on this machine

MakeClient = Callable[..., httpx.AsyncClient]


def main(site: str) -> str:
    return f"/api/stats/main?site_id={site}&period=day"


def v2(site: str) -> dict[str, Any]:
    return {"site_id": site, "metrics": ["visitors"], "date_range": "day"}


# Every route that needs credentials: (method, rule) -> (a concrete path, a JSON body).
STATS_ROUTES: dict[tuple[str, str], tuple[str, Any]] = {
    ("POST", "/api/v2/query"): ("/api/v2/query", v2(A)),
    ("GET", "/api/stats/main"): (main(A), None),
    ("GET", "/api/stats/timeseries"): (f"/api/stats/timeseries?site_id={A}", None),
    ("GET", "/api/stats/breakdown/<path:name>"): (f"/api/stats/breakdown/pages?site_id={A}", None),
    ("GET", "/api/stats/realtime"): (f"/api/stats/realtime?site_id={A}", None),
    ("GET", "/api/stats/funnel"): (f"/api/stats/funnel?site_id={A}&steps=page:/,page:/x", None),
    ("GET", "/api/stats/retention"): (f"/api/stats/retention?site_id={A}", None),
    ("GET", "/api/stats/flow"): (f"/api/stats/flow?site_id={A}&page=/", None),
    ("GET", "/api/stats/sessions"): (f"/api/stats/sessions?site_id={A}", None),
    ("GET", "/api/stats/export"): (f"/api/stats/export?site_id={A}", None),
    ("GET", "/api/stats/dropped"): (f"/api/stats/dropped?site_id={A}", None),
}
ACCOUNT_ROUTES: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/api/keys"): ("/api/keys", None),
    ("POST", "/api/keys"): ("/api/keys", {"name": "ci"}),
    ("DELETE", f"/api/keys/<{ROW_ID}:key_id>"): ("/api/keys/1", None),
    ("DELETE", "/api/gdpr/erase"): (
        f"/api/gdpr/erase?site_id={A}&from=2020-01-01&to=2020-01-02",
        None,
    ),
    ("GET", "/api/users"): ("/api/users", None),
    ("POST", "/api/users"): ("/api/users", {"username": "u", "roles": {A: "viewer"}}),
    ("PUT", f"/api/users/<{ROW_ID}:user_id>/roles/<site_id>"): (
        f"/api/users/1/roles/{A}",
        {"role": "viewer"},
    ),
    ("DELETE", f"/api/users/<{ROW_ID}:user_id>/roles/<site_id>"): (f"/api/users/1/roles/{A}", None),
    ("DELETE", f"/api/users/<{ROW_ID}:user_id>"): ("/api/users/2", None),
    ("GET", "/api/shared-links"): ("/api/shared-links", None),
    ("POST", "/api/shared-links"): ("/api/shared-links", {"site_id": A}),
    ("DELETE", f"/api/shared-links/<{ROW_ID}:link_id>"): ("/api/shared-links/1", None),
    ("POST", "/api/auth/password"): (
        "/api/auth/password",
        {"current_password": PASSWORD, "new_password": "another password"},
    ),
}
# Lists filtered by what the caller may read (tests/test_sites.py checks the filtering).
LIST_ROUTES: dict[tuple[str, str], tuple[str, Any]] = {("GET", "/api/sites"): ("/api/sites", None)}
PROTECTED = {**STATS_ROUTES, **ACCOUNT_ROUTES, **LIST_ROUTES}
# Open to anyone: what a login or setup screen needs before there is a session.
PUBLIC_API = {
    ("GET", "/api/auth/status"),
    ("POST", "/api/auth/setup"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/logout"),
    ("POST", "/api/auth/accept-invite"),
    ("POST", "/api/auth/shared-link"),
}


@pytest.fixture
async def clients() -> AsyncIterator[MakeClient]:
    """``clients(server)``: a fresh client with its own cookie jar, closed at the end."""
    made: list[httpx.AsyncClient] = []

    def make(server: RunningServer, **kwargs: Any) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=server.url, timeout=30, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def log_in(
    client: httpx.AsyncClient, username: str = "admin", password: str = PASSWORD
) -> httpx.AsyncClient:
    """Log in; the client then sends the session's CSRF token with every request."""
    response = await client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


async def send(
    client: httpx.AsyncClient, method: str, path: str, body: Any = None, **kwargs: Any
) -> httpx.Response:
    return await client.request(method, path, json=body, **kwargs)


async def create_user(admin: httpx.AsyncClient, username: str, **fields: Any) -> dict[str, Any]:
    response = await admin.post("/api/users", json={"username": username, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def cookie_attributes(response: httpx.Response, name: str) -> set[str]:
    """The attributes of the ``Set-Cookie`` for ``name``: {"httponly", "path=/", ...}."""
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    return {part.strip().lower() for part in header.split(";")[1:]}


def assert_json_error(response: httpx.Response, status: int, route: Any = None) -> None:
    assert response.status_code == status, (route, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), route
    assert response.json()["error"], route


# --- setup, the admin password, login -------------------------------------------------


async def test_first_run_setup_from_this_machine_then_login_is_required(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server()
    browser = clients(server)
    status = (await browser.get("/api/auth/status")).json()
    assert status["setup_required"] is True and status["access"] == "loopback"
    assert (await browser.get(main(A))).status_code == 200  # loopback may read until set up
    assert_json_error(await browser.get(main(A), headers=PROXIED), 403)  # a proxy: anyone
    assert_json_error(await browser.post("/api/auth/login", json={"password": "x"}), 409)

    refused = await browser.post("/api/auth/setup", json={"password": PASSWORD}, headers=PROXIED)
    assert_json_error(refused, 403)
    assert_json_error(await browser.post("/api/auth/setup", json={"password": "short"}), 400)
    assert_json_error(await browser.post("/api/auth/setup", content=f"password={PASSWORD}"), 400)

    done = await browser.post("/api/auth/setup", json={"password": PASSWORD})
    assert done.status_code == 201, done.text
    assert done.json()["user"]["username"] == "admin" and done.json()["csrf_token"]
    assert {"httponly", "samesite=strict", "path=/"} <= cookie_attributes(done, "mallard_session")
    assert "secure" not in cookie_attributes(done, "mallard_session")  # cookie_secure is off
    assert_json_error(await browser.post("/api/auth/setup", json={"password": "x" * 20}), 409)
    assert (await browser.get(main(A))).status_code == 200  # with the session cookie

    stranger = clients(server)
    assert_json_error(await stranger.get(main(A)), 401)  # loopback no longer enough
    assert (await stranger.get("/api/auth/status")).json()["setup_required"] is False
    await log_in(stranger)
    assert (await stranger.get(main(A))).status_code == 200

    database = b"".join(path.read_bytes() for path in (server.data_dir / "auth").iterdir())
    assert b"$argon2id$" in database and PASSWORD.encode() not in database


async def test_admin_password_setting_defines_and_rehashes_the_admin(
    start_server: Any, clients: MakeClient, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    first = await start_server(data_dir=data_dir, admin_password=PASSWORD, cookie_secure=True)
    async with httpx.AsyncClient(base_url=first.url) as browser:  # closed before the stop
        assert_json_error(await browser.post("/api/auth/setup", json={"password": "x" * 20}), 409)
        response = await browser.post("/api/auth/login", json={"password": PASSWORD})
        assert "secure" in cookie_attributes(response, "mallard_session")
        cookie = {"Cookie": f"mallard_session={response.cookies['mallard_session']}"}
        assert (await browser.get(main(A), headers=cookie)).status_code == 200
    await first.stop()

    same = await start_server(data_dir=data_dir, admin_password=PASSWORD)
    async with httpx.AsyncClient(base_url=same.url) as browser:
        assert (await browser.get(main(A), headers=cookie)).status_code == 200  # unchanged
    await same.stop()

    changed = await start_server(data_dir=data_dir, admin_password="a new password")
    browser = clients(changed)
    assert_json_error(await browser.get(main(A), headers=cookie), 401)  # sessions ended
    assert_json_error(await browser.post("/api/auth/login", json={"password": PASSWORD}), 401)
    await log_in(browser, password="a new password")


async def test_lockout_per_client_with_retry_after(
    start_server: Any, clients: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_server(admin_password=PASSWORD, login_max_failures=3, login_lockout=2)
    browser = clients(server)
    wrong = [{"password": "wrong one"}, {"username": "nobody", "password": PASSWORD}]
    for body in (*wrong, wrong[0]):
        assert_json_error(await browser.post("/api/auth/login", json=body), 401)
    locked = await browser.post("/api/auth/login", json={"password": PASSWORD})
    assert_json_error(locked, 429)
    assert locked.headers["Retry-After"] in ("1", "2")

    # Another client, relayed by a trusted proxy, is not locked...
    other = {"X-Forwarded-For": "203.0.113.77"}
    assert (
        await browser.post("/api/auth/login", json={"password": PASSWORD}, headers=other)
    ).status_code == 200
    # ...until it fails too; forging the left part of X-Forwarded-For does not help.
    for forged in range(3):
        headers = {"X-Forwarded-For": f"6.6.6.{forged}, 203.0.113.77"}
        assert_json_error(
            await browser.post("/api/auth/login", json=wrong[0], headers=headers), 401
        )
    headers = {"X-Forwarded-For": "7.7.7.7, 203.0.113.77"}
    assert_json_error(
        await browser.post("/api/auth/login", json={"password": PASSWORD}, headers=headers), 429
    )

    await trio.sleep(2.1)
    await log_in(browser)

    # The address was only ever in memory: not on disk, not in a log line.
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert b"203.0.113.77" not in path.read_bytes(), path
    assert "203.0.113.77" not in caplog.text


async def test_sessions_expire(start_server: Any, clients: MakeClient) -> None:
    server = await start_server(admin_password=PASSWORD, session_ttl=1)
    response = await clients(server).post("/api/auth/login", json={"password": PASSWORD})
    assert "max-age=1" in cookie_attributes(response, "mallard_session")
    # Sent by hand, so that only the server's clock can end it.
    cookie = {"Cookie": f"mallard_session={response.cookies['mallard_session']}"}
    browser = clients(server)
    assert (await browser.get("/api/auth/status", headers=cookie)).json()["access"] == "session"
    assert (await browser.get(main(A), headers=cookie)).status_code == 200
    await trio.sleep(1.2)
    assert (await browser.get("/api/auth/status", headers=cookie)).json()["access"] is None
    assert_json_error(await browser.get(main(A), headers=cookie), 401)


async def test_logout_needs_the_csrf_token_and_ends_the_session(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    browser = await log_in(clients(server))
    token = browser.headers.pop("X-CSRF-Token")
    assert_json_error(await browser.post("/api/auth/logout"), 403)
    cookie = {"Cookie": f"mallard_session={browser.cookies['mallard_session']}"}
    done = await browser.post("/api/auth/logout", headers={"X-CSRF-Token": token})
    assert done.status_code == 204
    assert "max-age=0" in cookie_attributes(done, "mallard_session")
    assert_json_error(await clients(server).get(main(A), headers=cookie), 401)


async def test_own_password_change_ends_other_sessions(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    here, elsewhere = await log_in(clients(server)), await log_in(clients(server))
    body = {"current_password": "not it at all", "new_password": "a better password"}
    assert_json_error(await here.post("/api/auth/password", json=body), 403)
    body["current_password"] = PASSWORD
    assert (await here.post("/api/auth/password", json=body)).status_code == 204
    assert (await here.get(main(A))).status_code == 200
    assert_json_error(await elsewhere.get(main(A)), 401)
    await log_in(clients(server), password="a better password")


# --- CSRF -----------------------------------------------------------------------------


async def test_csrf_token_required_for_cookie_state_changes(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    browser = await log_in(clients(server))
    token = browser.headers.pop("X-CSRF-Token")
    assert (await browser.get(main(A))).status_code == 200  # reading needs no token
    assert (await browser.get("/api/auth/status")).json()["csrf_token"] == token
    for method, rule in [("POST", "/api/keys"), ("POST", "/api/v2/query"), ("POST", "/api/users")]:
        path, body = PROTECTED[(method, rule)]
        assert_json_error(await send(browser, method, path, body), 403, rule)
        wrong = {"X-CSRF-Token": token[:-1] + ("A" if token[-1] != "A" else "B")}
        assert_json_error(await send(browser, method, path, body, headers=wrong), 403, rule)
    created = await browser.post("/api/keys", json={"name": "ci"}, headers={"X-CSRF-Token": token})
    assert created.status_code == 201
    query = await browser.post("/api/v2/query", json=v2(A), headers={"X-CSRF-Token": token})
    assert query.status_code == 200
    # A program's key needs no token: no cookie, nothing a forged page could ride on.
    program = clients(server, headers={"Authorization": f"Bearer {created.json()['key']}"})
    assert (await program.post("/api/v2/query", json=v2(A))).status_code == 200
    # Routes used before a session exists accept JSON only, which a cross-site form cannot send.
    form = await clients(server).post("/api/auth/login", data={"password": PASSWORD})
    assert_json_error(form, 400)


# --- API keys -------------------------------------------------------------------------


async def test_api_keys_scopes_listing_and_revocation(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    admin = await log_in(clients(server))
    read = (await admin.post("/api/keys", json={"name": "grafana"})).json()
    full = (await admin.post("/api/keys", json={"name": "ops", "scope": "admin"})).json()
    assert read["scope"] == "read" and full["scope"] == "admin"
    assert read["key"].startswith("mm_") and read["prefix"] == read["key"][:9]
    listed = await admin.get("/api/keys")
    assert [k["name"] for k in listed.json()["keys"]] == ["grafana", "ops"]
    assert read["key"] not in listed.text and "key" not in listed.json()["keys"][0]
    assert_json_error(await admin.post("/api/keys", json={"scope": "everything"}), 400)

    for headers in ({"Authorization": f"Bearer {read['key']}"}, {"X-API-Key": read["key"]}):
        program = clients(server, headers=headers)
        assert (await program.post("/api/v2/query", json=v2(A))).status_code == 200
        assert (await program.get(main(B))).status_code == 200
        assert (await program.get(PROTECTED[("GET", "/api/stats/export")][0])).status_code == 200
        assert_json_error(await program.get("/api/keys"), 403)
        assert_json_error(await program.post("/api/shared-links", json={"site_id": A}), 403)

    ops = clients(server, headers={"Authorization": f"Bearer {full['key']}"})
    assert (await ops.post("/api/shared-links", json={"site_id": A})).status_code == 201
    assert (await ops.get("/api/users")).status_code == 200

    for bad in (
        {"Authorization": "Bearer mm_nope"},
        {"X-API-Key": "mm_nope"},
        {"Authorization": "Basic YWRtaW46eA=="},
        {"Authorization": f"Bearer {PASSWORD}"},
    ):
        assert_json_error(await clients(server, headers=bad).get(main(A)), 401, bad)

    assert (await admin.delete(f"/api/keys/{read['id']}")).status_code == 204
    refused = await clients(server, headers={"X-API-Key": read["key"]}).get(main(A))
    assert_json_error(refused, 401)
    assert "revoked" in refused.json()["error"]
    assert_json_error(await admin.delete(f"/api/keys/{read['id']}"), 404)


async def test_bodies_and_ids_that_are_no_text_or_no_row_are_4xx(
    start_server: Any, clients: MakeClient
) -> None:
    """A lone surrogate, bytes that are not UTF-8, nesting too deep: 400; an id beyond
    SQLite's integers: 404 (each was a 500 with a traceback)."""
    server = await start_server(admin_password=PASSWORD)
    admin = await log_in(clients(server))
    json_type = {"Content-Type": "application/json"}
    deep = b"[" * 50_000 + b"]" * 50_000
    for body in (b'{"password": "\\ud800"}', b'{"password": "\xff"}', deep):
        for path in ("/api/auth/login", "/api/keys", "/api/users"):
            assert_json_error(await admin.post(path, content=body, headers=json_type), 400, path)
    huge = 10**23
    for method, path in [
        ("DELETE", f"/api/keys/{huge}"),
        ("DELETE", f"/api/users/{huge}"),
        ("DELETE", f"/api/shared-links/{huge}"),
        ("PUT", f"/api/users/{huge}/roles/{A}"),
    ]:
        assert_json_error(await send(admin, method, path, {"role": "viewer"}), 404, path)


async def test_a_key_reads_only_what_its_user_may(start_server: Any, clients: MakeClient) -> None:
    server = await start_server(admin_password=PASSWORD)
    admin = await log_in(clients(server))
    await create_user(admin, "kai", password=PASSWORD, roles={A: "admin"})
    kai = await log_in(clients(server), "kai")
    key = (await kai.post("/api/keys", json={"name": "mine"})).json()["key"]
    program = clients(server, headers={"Authorization": f"Bearer {key}"})
    assert (await program.post("/api/v2/query", json=v2(A))).status_code == 200
    assert_json_error(await program.post("/api/v2/query", json=v2(B)), 403)
    assert [k["user"] for k in (await kai.get("/api/keys")).json()["keys"]] == ["kai"]
    assert len((await admin.get("/api/keys")).json()["keys"]) == 1  # a superuser sees all


# --- users, roles, invites ------------------------------------------------------------


async def test_a_viewer_reads_the_stats_of_their_sites_and_nothing_else(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    admin = await log_in(clients(server))
    created = await create_user(admin, "vera", password=PASSWORD, roles={A: "viewer"})
    assert created["user"]["roles"] == {A: "viewer"} and "invite" not in created
    vera = await log_in(clients(server), "vera")
    status = (await vera.get("/api/auth/status")).json()
    assert status["user"]["roles"] == {A: "viewer"} and status["user"]["superuser"] is False

    for (method, rule), (path, body) in STATS_ROUTES.items():
        assert (await send(vera, method, path, body)).status_code == 200, rule
        other = path.replace(A, B)
        assert_json_error(await send(vera, method, other, body and v2(B)), 403, rule)
    own = {
        ("POST", "/api/auth/password"),
        ("GET", "/api/keys"),
        ("DELETE", f"/api/keys/<{ROW_ID}:key_id>"),
    }
    for route, (path, body) in ACCOUNT_ROUTES.items():
        if route not in own:  # one's own password and keys: below
            assert_json_error(await send(vera, route[0], path, body), 403, route)
    assert (await vera.get("/api/keys")).json() == {"keys": []}
    assert_json_error(await vera.delete("/api/keys/1"), 404)  # not hers


async def test_site_admins_manage_their_sites_members_only(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    admin = await log_in(clients(server))
    vera = (await create_user(admin, "vera", password=PASSWORD, roles={A: "viewer"}))["user"]
    await create_user(admin, "olga", password=PASSWORD, roles={B: "owner"})
    adam_user = (await create_user(admin, "adam", password=PASSWORD, roles={A: "admin"}))["user"]
    assert_json_error(
        await admin.post("/api/users", json={"username": "VERA", "roles": {A: "viewer"}}), 409
    )
    for bad in (
        {"username": "no spaces"},
        {"username": "x", "roles": {A: "emperor"}},
        {"username": "x", "roles": {"bad site": "viewer"}},
        {"username": "x"},
        {"username": "x", "roles": {A: "viewer"}, "password": "short"},
        {"username": "x", "roles": {A: "viewer"}, "superuser": "yes"},
    ):
        assert_json_error(await admin.post("/api/users", json=bad), 400, bad)

    adam = await log_in(clients(server), "adam")
    val = await adam.post(
        "/api/users", json={"username": "val", "password": PASSWORD, "roles": {A: "viewer"}}
    )
    assert val.status_code == 201
    for refused in (
        {"username": "x", "roles": {A: "owner"}},
        {"username": "x", "roles": {B: "viewer"}},
        {"username": "x", "roles": {A: "viewer"}, "superuser": True},
    ):
        assert_json_error(await adam.post("/api/users", json=refused), 403, refused)
    members = (await adam.get("/api/users")).json()["users"]
    assert {u["username"]: u["roles"] for u in members} == {
        "vera": {A: "viewer"},
        "adam": {A: "admin"},
        "val": {A: "viewer"},
    }

    promote = f"/api/users/{vera['id']}/roles/{A}"
    assert (await adam.put(promote, json={"role": "admin"})).json()["user"]["roles"] == {A: "admin"}
    assert_json_error(await adam.put(promote, json={"role": "owner"}), 403)
    assert_json_error(
        await adam.put(f"/api/users/{vera['id']}/roles/{B}", json={"role": "viewer"}), 403
    )
    assert_json_error(await adam.put(f"/api/users/999/roles/{A}", json={"role": "viewer"}), 404)
    for manager in (adam, admin):  # a superuser owns every site: no role of theirs to change
        superuser_role = f"/api/users/1/roles/{A}"
        assert_json_error(await manager.put(superuser_role, json={"role": "viewer"}), 409)
        assert_json_error(await manager.delete(superuser_role), 409)
    vera_client = await log_in(clients(server), "vera")
    assert (await vera_client.get(main(A))).status_code == 200
    assert (await adam.delete(promote)).json()["user"]["roles"] == {}
    assert_json_error(await vera_client.get(main(A)), 403)  # at once, same session
    assert_json_error(await adam.delete(promote), 404)
    assert_json_error(await adam.delete(f"/api/users/{vera['id']}"), 403)

    assert_json_error(await admin.delete("/api/users/1"), 403)  # the built-in admin stays
    assert (await admin.delete(f"/api/users/{adam_user['id']}")).status_code == 204
    assert_json_error(await adam.get(main(A)), 401)  # its sessions went with it
    assert_json_error(await admin.delete(f"/api/users/{adam_user['id']}"), 404)


async def test_invited_user_chooses_a_password_once(start_server: Any, clients: MakeClient) -> None:
    server = await start_server(admin_password=PASSWORD)
    admin = await log_in(clients(server))
    created = await create_user(admin, "ivan", roles={A: "viewer"})
    assert created["user"]["active"] is False
    token = created["invite"]["token"]
    assert_json_error(
        await clients(server).post(
            "/api/auth/login", json={"username": "ivan", "password": PASSWORD}
        ),
        401,
    )

    browser = clients(server)
    short = await browser.post("/api/auth/accept-invite", json={"token": token, "password": "x"})
    assert_json_error(short, 400)
    accepted = await browser.post(
        "/api/auth/accept-invite", json={"token": token, "password": PASSWORD}
    )
    assert accepted.status_code == 200 and accepted.json()["user"]["username"] == "ivan"
    assert (await browser.get(main(A))).status_code == 200  # logged in by the invite
    again = await browser.post(
        "/api/auth/accept-invite", json={"token": token, "password": "y" * 10}
    )
    assert_json_error(again, 400)
    await log_in(clients(server), "ivan")


# --- shared links ---------------------------------------------------------------------


async def test_shared_links_read_one_site_until_revoked(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    assert (
        await server.post_event({"d": A, "n": "pageview", "u": f"https://{A}/"})
    ).status_code == 202
    admin = await log_in(clients(server))
    link = await admin.post("/api/shared-links", json={"site_id": A, "name": "public"})
    assert link.status_code == 201 and link.json()["password_protected"] is False
    token = link.json()["token"]

    visitor = clients(server)
    answer = await visitor.get(main(A) + f"&auth={token}")
    assert answer.status_code == 200 and answer.json()["results"][0]["metrics"][0] == 1
    status = (await visitor.get(f"/api/auth/status?auth={token}")).json()
    assert status["access"] == "shared_link" and status["shared_link"] == {"site_id": A}
    by_header = clients(server, headers={"X-Mallard-Share": token})
    for (method, rule), (path, body) in STATS_ROUTES.items():
        expected = 403 if rule == "/api/stats/export" else 200  # raw events need an account
        assert (await send(by_header, method, path, body)).status_code == expected, rule
        assert_json_error(
            await send(by_header, method, path.replace(A, B), body and v2(B)), 403, rule
        )
    for (method, rule), (path, body) in ACCOUNT_ROUTES.items():
        assert_json_error(await send(by_header, method, path, body), 403, rule)

    listed = await admin.get(f"/api/shared-links?site_id={A}")
    assert [entry["name"] for entry in listed.json()["shared_links"]] == ["public"]
    assert token not in listed.text
    twice = await admin.get(f"/api/shared-links?site_id={A}&site_id={B}")  # was a 200
    assert_json_error(twice, 400)
    assert twice.json()["error"] == "parameter site_id is given more than once"
    assert (await admin.delete(f"/api/shared-links/{link.json()['id']}")).status_code == 204
    assert_json_error(await by_header.get(main(A)), 401)
    assert_json_error(await visitor.get(main(A) + f"&auth={token}"), 401)


async def test_password_protected_shared_link(start_server: Any, clients: MakeClient) -> None:
    server = await start_server(admin_password=PASSWORD)
    admin = await log_in(clients(server))
    assert_json_error(
        await admin.post("/api/shared-links", json={"site_id": A, "password": "x"}), 400
    )
    link = (
        await admin.post("/api/shared-links", json={"site_id": A, "password": "open sesame"})
    ).json()
    assert link["password_protected"] is True

    visitor = clients(server)
    locked = await visitor.get(main(A) + f"&auth={link['token']}")
    assert_json_error(locked, 401)
    assert locked.json()["password_required"] is True and A not in locked.text
    unlock = {"token": link["token"], "password": "open sesam"}
    assert_json_error(await visitor.post("/api/auth/shared-link", json=unlock), 401)
    unlock["password"] = "open sesame"
    opened = await visitor.post("/api/auth/shared-link", json=unlock)
    assert opened.status_code == 200 and opened.json()["shared_link"]["site_id"] == A
    assert {"httponly", "samesite=strict"} <= cookie_attributes(opened, "mallard_share")
    assert (await visitor.get(main(A) + f"&auth={link['token']}")).status_code == 200
    assert (await visitor.get(main(A))).status_code == 200  # the cookie alone
    assert_json_error(await visitor.get(main(B)), 403)

    assert (await admin.delete(f"/api/shared-links/{link['id']}")).status_code == 204
    assert_json_error(await visitor.get(main(A)), 401)


# --- every protected route ------------------------------------------------------------


def test_every_api_route_is_either_public_or_listed_as_protected(tmp_path: Path) -> None:
    """A new API route must be classified here (and so be tested below) before it ships."""
    app = create_app(settings=Settings(data_dir=tmp_path), writer=None, engine=None)  # type: ignore[arg-type]
    routes = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    assert routes == set(PROTECTED) | PUBLIC_API


async def test_every_protected_route_refuses_requests_without_credentials(
    start_server: Any, clients: MakeClient
) -> None:
    configured = await start_server(admin_password=PASSWORD)
    anonymous = clients(configured)
    for route, (path, body) in PROTECTED.items():
        refused = await send(anonymous, route[0], path, body)
        assert_json_error(refused, 401, route)
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")

    # No password at all: stats for this machine only, nothing else for anyone.
    fresh = await start_server()
    local = clients(fresh)
    for route, (path, body) in STATS_ROUTES.items():
        assert (await send(local, route[0], path, body)).status_code == 200, route
        assert_json_error(await send(local, route[0], path, body, headers=PROXIED), 403, route)
    for route, (path, body) in ACCOUNT_ROUTES.items():
        assert_json_error(await send(local, route[0], path, body), 401, route)


async def test_a_read_key_is_refused_on_every_account_route(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    admin = await log_in(clients(server))
    key = (await admin.post("/api/keys", json={"name": "read"})).json()["key"]
    program = clients(server, headers={"X-API-Key": key})
    for route, (path, body) in ACCOUNT_ROUTES.items():
        assert_json_error(await send(program, route[0], path, body), 403, route)


async def test_stats_refused_from_other_machines_while_no_password_is_set(
    start_server: Any, clients: MakeClient
) -> None:
    """A real non-loopback interface, when this machine has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    server = await start_server(host="0.0.0.0")
    port = server.url.rsplit(":", 1)[1]
    outside = httpx.AsyncClient(base_url=f"http://{address}:{port}", timeout=30)
    async with outside:
        assert_json_error(await outside.get(main(A)), 403)
        assert (await outside.get("/api/auth/status")).json()["access"] is None
        assert_json_error(await outside.post("/api/auth/setup", json={"password": PASSWORD}), 403)
    assert (await clients(server).get(main(A))).status_code == 200


# --- headers --------------------------------------------------------------------------


async def test_security_headers_on_the_app_but_not_on_ingestion(
    start_server: Any, clients: MakeClient
) -> None:
    server = await start_server(admin_password=PASSWORD)
    browser = clients(server)
    for response in [
        await browser.get("/health"),
        await browser.get("/api/auth/status"),
        await browser.get(main(A)),
        await browser.get("/no/such/page"),
        await browser.post("/api/auth/login", json={"password": "wrong password"}),
    ]:
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert (await browser.get("/api/auth/status")).headers["Cache-Control"] == "no-store"

    event = await server.post_event({"d": A, "n": "pageview", "u": f"https://{A}/"})
    assert event.status_code == 202 and event.headers["Access-Control-Allow-Origin"] == "*"
    assert "Content-Security-Policy" not in event.headers
    preflight = await browser.options("/api/event", headers={"Origin": "https://a.example"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"


# --- several processes ----------------------------------------------------------------


def test_worker_processes_share_sessions_and_keys(tmp_path: Path) -> None:
    server = start_process(
        tmp_path / "data", "--workers", "2", env={"MALLARD_ADMIN_PASSWORD": PASSWORD}
    )
    try:
        deadline = time.monotonic() + 30
        while server.log.count("serving") < 2:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.05)
        with httpx.Client(base_url=server.url, timeout=30) as browser:
            login = browser.post("/api/auth/login", json={"password": PASSWORD})
            csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
            key = browser.post("/api/keys", json={"name": "ci"}, headers=csrf).json()["key"]
            cookie = f"mallard_session={login.cookies['mallard_session']}"
        for _ in range(20):  # a new connection each time: the kernel spreads them over both
            with httpx.Client(base_url=server.url, timeout=30) as client:
                assert client.get(main(A), headers={"Cookie": cookie}).status_code == 200
                assert client.get(main(A), headers={"X-API-Key": key}).status_code == 200
                assert client.get(main(A)).status_code == 401
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
