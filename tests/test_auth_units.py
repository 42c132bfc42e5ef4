"""Access control without a server: the policy, the lockout, passwords and the store."""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mallard.auth import passwords, policy
from mallard.auth.lockout import Lockout, client_key
from mallard.auth.policy import LOOPBACK, Principal, User
from mallard.auth.store import AuthStore, DuplicateUser
from mallard.auth.tokens import token_hash

ROOT = User(id=1, username="admin", superuser=True, builtin=True)
OWNER = User(id=2, username="olga", roles={"a.example": "owner", "b.example": "viewer"})
ADMIN = User(id=3, username="adam", roles={"a.example": "admin"})
VIEWER = User(id=4, username="vera", roles={"a.example": "viewer"})


def session(user: User) -> Principal:
    return Principal(via="session", user=user)


def key(user: User, scope: str) -> Principal:
    return Principal(via="api_key", user=user, scope=scope)


SHARE = Principal(via="shared_link", site_id="a.example")


@pytest.mark.parametrize(
    ("principal", "readable"),
    [
        (session(ROOT), {"a.example", "b.example", "c.example"}),
        (session(OWNER), {"a.example", "b.example"}),
        (session(VIEWER), {"a.example"}),
        (key(VIEWER, "read"), {"a.example"}),
        (key(OWNER, "read"), {"a.example", "b.example"}),
        (SHARE, {"a.example"}),
        (LOOPBACK, {"a.example", "b.example", "c.example"}),
    ],
)
def test_who_reads_which_site(principal: Principal, readable: set[str]) -> None:
    for site in ("a.example", "b.example", "c.example"):
        assert policy.can_read(principal, site) is (site in readable), site


@pytest.mark.parametrize(
    ("principal", "administers", "manages_a", "manages_b"),
    [
        (session(ROOT), True, True, True),
        (key(ROOT, "admin"), True, True, True),
        (key(ROOT, "read"), False, False, False),
        (session(OWNER), True, True, False),  # only a viewer on b.example
        (session(ADMIN), True, True, False),
        (session(VIEWER), False, False, False),  # a viewer reads and nothing else
        (SHARE, False, False, False),
        (LOOPBACK, False, False, False),
    ],
)
def test_who_manages(
    principal: Principal, administers: bool, manages_a: bool, manages_b: bool
) -> None:
    assert policy.may_administer(principal) is administers
    assert policy.can_manage_site(principal, "a.example") is manages_a
    assert policy.can_manage_site(principal, "b.example") is manages_b


def test_roles_are_granted_up_to_ones_own() -> None:
    assert policy.can_grant(session(OWNER), "a.example", "owner")
    assert policy.can_grant(session(ADMIN), "a.example", "admin")
    assert policy.can_grant(session(ADMIN), "a.example", "viewer")
    assert not policy.can_grant(session(ADMIN), "a.example", "owner")
    assert not policy.can_grant(session(ADMIN), "b.example", "viewer")
    assert not policy.can_grant(session(VIEWER), "a.example", "viewer")
    assert policy.can_grant(session(ROOT), "z.example", "owner")
    assert policy.managed_sites(session(ROOT)) is None
    assert policy.managed_sites(session(OWNER)) == {"a.example"}
    assert policy.managed_sites(session(VIEWER)) == frozenset()


def test_only_superusers_delete_accounts_and_never_the_builtin_admin() -> None:
    assert policy.can_delete_user(session(ROOT), OWNER)
    assert not policy.can_delete_user(session(ROOT), ROOT)
    assert not policy.can_delete_user(key(ROOT, "read"), OWNER)
    assert not policy.can_delete_user(session(OWNER), VIEWER)


def test_keys_are_managed_by_their_owner_or_a_superuser() -> None:
    assert policy.can_manage_key(session(VIEWER), VIEWER.id)
    assert not policy.can_manage_key(session(VIEWER), OWNER.id)
    assert not policy.can_manage_key(key(VIEWER, "read"), VIEWER.id)
    assert policy.can_manage_key(session(ROOT), VIEWER.id)


def test_user_json_shows_only_the_asked_sites() -> None:
    shown = OWNER.as_json(frozenset({"a.example"}))
    assert shown["roles"] == {"a.example": "owner"}
    assert OWNER.as_json()["roles"] == {"a.example": "owner", "b.example": "viewer"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lockout_after_max_failures_and_for_its_duration() -> None:
    clock = Clock()
    lockout = Lockout(max_failures=3, duration=60, clock=clock)
    for _ in range(2):
        lockout.failed("203.0.113.9")
        assert lockout.retry_after("203.0.113.9") is None
    lockout.failed("203.0.113.9")
    assert lockout.retry_after("203.0.113.9") == 60
    assert lockout.retry_after("198.51.100.1") is None  # per client
    clock.now += 59.5
    assert lockout.retry_after("203.0.113.9") == 1
    clock.now += 1
    assert lockout.retry_after("203.0.113.9") is None
    lockout.failed("203.0.113.9")  # a fresh window: one failure is not a lockout
    assert lockout.retry_after("203.0.113.9") is None


def test_lockout_window_and_success_reset_the_count() -> None:
    clock = Clock()
    lockout = Lockout(max_failures=2, duration=10, clock=clock)
    lockout.failed("a")
    clock.now += 11  # the window has passed
    lockout.failed("a")
    assert lockout.retry_after("a") is None
    lockout.succeeded("a")
    lockout.failed("a")
    assert lockout.retry_after("a") is None
    lockout.failed("a")
    assert lockout.retry_after("a") == 10


def test_lockout_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mallard.auth.lockout.MAX_TRACKED", 3)
    lockout = Lockout(max_failures=1, duration=10, clock=Clock())
    for client in "abcde":
        lockout.failed(client)
    assert [lockout.retry_after(client) for client in "abcde"] == [None, None, 10, 10, 10]


PROXIES = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "real_ip", "expected"),
    [
        ("203.0.113.9", None, None, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", None, "203.0.113.9"),  # untrusted peer: header ignored
        ("127.0.0.1", "198.51.100.1", None, "198.51.100.1"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.1", None, "198.51.100.1"),  # left part is forgeable
        ("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.2", None, "198.51.100.1"),  # proxy chain
        ("127.0.0.1", None, "198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", None, None, "127.0.0.1"),
        ("127.0.0.1", "garbage", None, "unknown"),
        ("::ffff:127.0.0.1", "2001:db8::1", None, "2001:db8::1"),
    ],
)
def test_client_key_is_the_rightmost_untrusted_hop(
    peer: str, forwarded_for: str | None, real_ip: str | None, expected: str
) -> None:
    assert client_key(peer, forwarded_for, real_ip, PROXIES) == expected


def test_passwords_are_argon2id_and_verified_in_constant_shape() -> None:
    hashed = passwords.hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert hashed != passwords.hash_password("correct horse")  # salted
    assert passwords.verify_password(hashed, "correct horse")
    assert not passwords.verify_password(hashed, "Correct horse")
    assert not passwords.verify_password(None, "correct horse")
    assert not passwords.verify_password("not a hash", "correct horse")
    assert not passwords.needs_rehash(hashed)
    with pytest.raises(passwords.WeakPassword, match="8 to 1024"):
        passwords.check_new_password("short")
    with pytest.raises(passwords.WeakPassword, match="string"):
        passwords.check_new_password(12345678)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuthStore]:
    store = AuthStore(tmp_path / "auth" / "mallard.sqlite3")
    store.open()
    yield store
    store.close()


def test_store_opens_while_another_process_writes(tmp_path: Path) -> None:
    """Two workers start at once: switching to the WAL journal meets the other's
    write transaction, where SQLite answers "database is locked" without waiting."""
    path = tmp_path / "auth" / "mallard.sqlite3"
    path.parent.mkdir()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE earlier (x)")
    other.execute("BEGIN IMMEDIATE")  # the other worker's write, under way
    threading.Timer(0.3, other.execute, ["COMMIT"]).start()
    store = AuthStore(path)
    store.open()
    try:
        assert store.builtin_id() is not None
    finally:
        store.close()
        other.close()


def test_store_keeps_only_hashes_of_tokens(store: AuthStore, tmp_path: Path) -> None:
    admin_id = store.builtin_id()
    assert store.claim_builtin_password(passwords.hash_password("correct horse")) is not None
    assert store.claim_builtin_password(passwords.hash_password("another one")) is None
    new = store.create_session(60, user_id=admin_id)
    api_key, info = store.create_key(admin_id, "ci", "read")
    assert api_key.startswith("mm_") and info.shown == api_key[: len(info.shown)]
    share, _ = store.create_link("a.example", "public", None)
    invite, _ = store.create_invite(admin_id, 60)
    store.close()
    files = b"".join(path.read_bytes() for path in (tmp_path / "auth").iterdir())
    for secret in (new.token, api_key, share, invite, "correct horse"):
        assert secret.encode() not in files
    assert token_hash(api_key).encode() in files
    assert (tmp_path / "auth").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "auth" / "mallard.sqlite3").stat().st_mode & 0o777 == 0o600


def test_store_sessions_expire_and_die_with_their_user(store: AuthStore) -> None:
    user = store.create_user("vera", None, False, {"a.example": "viewer"})
    short = store.create_session(0.2, user_id=user.id)
    long = store.create_session(60, user_id=user.id)
    assert store.session(short.token) is not None
    time.sleep(0.3)
    assert store.session(short.token) is None
    found = store.session(long.token)
    assert found is not None and found.user == user
    store.delete_user(user.id)
    assert store.session(long.token) is None


def test_store_invites_work_once_and_expire(store: AuthStore) -> None:
    user = store.create_user("ivan", None, False, {"a.example": "viewer"})
    token, _ = store.create_invite(user.id, 60)
    stale, _ = store.create_invite(user.id, -1)
    assert store.accept_invite(stale, "hash") is None
    accepted = store.accept_invite(token, "hash")
    assert accepted is not None and accepted.has_password
    assert store.accept_invite(token, "hash") is None


def test_store_usernames_are_unique_case_insensitively(store: AuthStore) -> None:
    store.create_user("Vera", None, False, {})
    with pytest.raises(DuplicateUser):
        store.create_user("vera", None, False, {})
    with pytest.raises(sqlite3.IntegrityError):  # roles are checked by the schema too
        store.set_role(store.builtin_id(), "a.example", "emperor")
