"""Accounts, per-site roles, sessions, API keys, shared links and invites, in SQLite.

One file, ``data_dir/auth/mallard.sqlite3`` (folder 0700, file 0600), in WAL
journal mode so that every server process of a data dir sees the same sessions
and keys. Secrets are kept only as hashes: passwords as Argon2id, tokens as
SHA-256. Every method blocks; call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from mallard.auth.policy import User
from mallard.auth.tokens import API_KEY_SHOWN, new_api_key, new_token, token_hash

BUILTIN_ADMIN = "admin"
BUSY_SECONDS = 30.0  # how long a statement waits for another process's lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT,
    superuser INTEGER NOT NULL DEFAULT 0,
    builtin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS roles (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    site_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'admin', 'owner')),
    PRIMARY KEY (user_id, site_id)
);
CREATE TABLE IF NOT EXISTS shared_links (
    id INTEGER PRIMARY KEY,
    site_id TEXT NOT NULL,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    shared_link_id INTEGER REFERENCES shared_links(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    expires_at REAL NOT NULL,
    CHECK ((user_id IS NULL) <> (shared_link_id IS NULL))
);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'admin')),
    key_hash TEXT NOT NULL UNIQUE,
    shown TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS invites (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at REAL NOT NULL
);
"""


class DuplicateUser(Exception):
    """The username is taken (names compare case-insensitively)."""


@dataclasses.dataclass(frozen=True)
class ApiKey:
    id: int
    user_id: int
    username: str
    name: str
    scope: str
    shown: str  # the first characters, "mm_Ab3dE9"
    created_at: float


@dataclasses.dataclass(frozen=True)
class SharedLink:
    id: int
    site_id: str
    name: str
    password_hash: str | None
    created_at: float


@dataclasses.dataclass(frozen=True)
class Session:
    token_hash: str
    csrf_token: str
    expires_at: float
    user: User | None  # a login session ...
    link: SharedLink | None  # ... or an unlocked password-protected shared link


@dataclasses.dataclass(frozen=True)
class NewSession:
    token: str
    csrf_token: str
    expires_at: float


def _use_wal_journal(db: sqlite3.Connection) -> None:
    """Switch to the WAL journal, waiting for other processes' writes.

    SQLite does not wait (no busy handler) when the switch meets another
    connection's write transaction: two workers starting at once would make
    one fail. So this retries, for as long as any statement would wait.
    """
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


class BrokenAuthStore(Exception):
    """The accounts' database cannot be opened as one."""


class AuthStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Create the folder, the file and the tables if needed, and the built-in admin."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        try:  # connecting to a folder of that name fails here
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_SECONDS
            )
            _use_wal_journal(db)
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA secure_delete = ON")
            db.executescript(SCHEMA)  # idempotent; each statement commits on its own
        except sqlite3.DatabaseError as error:
            if "locked" in str(error):
                raise
            raise BrokenAuthStore(
                f"{self.path} is not a usable SQLite database ({error}); restore it from a "
                "backup, or move it away to start with no accounts"
            ) from None
        self._db = db
        with self._transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO users (username, superuser, builtin, created_at) "
                "VALUES (?, 1, 1, ?)",
                (BUILTIN_ADMIN, time.time()),
            )

    def check(self) -> None:
        """Open and close: raise ``BrokenAuthStore`` now rather than when serving starts."""
        self.open()
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so writers queue."""
        assert self._db is not None, "AuthStore.open() first"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, parameters: Iterable[object] = ()) -> list[tuple]:
        assert self._db is not None, "AuthStore.open() first"
        with self._lock:
            return self._db.execute(sql, tuple(parameters)).fetchall()

    # --- users ---------------------------------------------------------------

    def configured(self) -> bool:
        """True once any account has a password: from then on every reader must log in."""
        return bool(self._rows("SELECT 1 FROM users WHERE password_hash IS NOT NULL LIMIT 1"))

    def _users(self, where: str, parameters: Iterable[object]) -> list[tuple[User, str | None]]:
        rows = self._rows(
            "SELECT id, username, superuser, builtin, password_hash FROM users "
            f"WHERE {where} ORDER BY id",
            parameters,
        )
        roles: dict[int, dict[str, str]] = {}
        ids = [row[0] for row in rows]
        if ids:
            marks = ",".join("?" * len(ids))
            for user_id, site, role in self._rows(
                f"SELECT user_id, site_id, role FROM roles WHERE user_id IN ({marks})", ids
            ):
                roles.setdefault(user_id, {})[site] = role
        return [
            (
                User(
                    id=user_id,
                    username=name,
                    superuser=bool(superuser),
                    builtin=bool(builtin),
                    roles=roles.get(user_id, {}),
                    has_password=password_hash is not None,
                ),
                password_hash,
            )
            for user_id, name, superuser, builtin, password_hash in rows
        ]

    def user(self, user_id: int) -> User | None:
        found = self._users("id = ?", (user_id,))
        return found[0][0] if found else None

    def user_with_hash(self, username: str) -> tuple[User, str | None] | None:
        found = self._users("username = ?", (username,))
        return found[0] if found else None

    def users(self) -> list[User]:
        return [user for user, _ in self._users("1", ())]

    def builtin_password_hash(self) -> str | None:
        [(password_hash,)] = self._rows("SELECT password_hash FROM users WHERE builtin = 1")
        return password_hash

    def claim_builtin_password(self, password_hash: str) -> User | None:
        """First-run setup: set the built-in admin's password unless one is set (then None)."""
        with self._transaction() as tx:
            claimed = tx.execute(
                "UPDATE users SET password_hash = ? WHERE builtin = 1 AND password_hash IS NULL",
                (password_hash,),
            ).rowcount
        return self._users("builtin = 1", ())[0][0] if claimed else None

    def create_user(
        self, username: str, password_hash: str | None, superuser: bool, roles: dict[str, str]
    ) -> User:
        with self._transaction() as tx:
            try:
                user_id = tx.execute(
                    "INSERT INTO users (username, password_hash, superuser, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (username, password_hash, int(superuser), time.time()),
                ).lastrowid
            except sqlite3.IntegrityError:
                raise DuplicateUser(username) from None
            tx.executemany(
                "INSERT INTO roles (user_id, site_id, role) VALUES (?, ?, ?)",
                [(user_id, site, role) for site, role in roles.items()],
            )
        assert user_id is not None
        return self._users("id = ?", (user_id,))[0][0]

    def set_role(self, user_id: int, site_id: str, role: str | None) -> None:
        """Give ``role`` on ``site_id``, or with None take the user's role there away."""
        with self._transaction() as tx:
            if role is None:
                tx.execute(
                    "DELETE FROM roles WHERE user_id = ? AND site_id = ?", (user_id, site_id)
                )
            else:
                tx.execute(
                    "INSERT INTO roles (user_id, site_id, role) VALUES (?, ?, ?) "
                    "ON CONFLICT (user_id, site_id) DO UPDATE SET role = excluded.role",
                    (user_id, site_id, role),
                )

    def delete_user(self, user_id: int) -> None:
        """The account and, with it, its roles, sessions, API keys and invites."""
        with self._transaction() as tx:
            tx.execute("DELETE FROM users WHERE id = ? AND builtin = 0", (user_id,))

    def set_password(self, user_id: int, password_hash: str, keep_session: str | None) -> None:
        """A new password ends every other session of the user."""
        with self._transaction() as tx:
            tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
            tx.execute(
                "DELETE FROM sessions WHERE user_id = ? AND token_hash IS NOT ?",
                (user_id, keep_session),
            )

    def builtin_id(self) -> int:
        [(user_id,)] = self._rows("SELECT id FROM users WHERE builtin = 1")
        return user_id

    # --- sessions --------------------------------------------------------------

    def create_session(
        self, ttl: float, *, user_id: int | None = None, link_id: int | None = None
    ) -> NewSession:
        """A login session (``user_id``) or an unlocked shared link (``link_id``)."""
        token, csrf_token, now = new_token(), new_token(), time.time()
        with self._transaction() as tx:
            tx.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            tx.execute(
                "INSERT INTO sessions "
                "(token_hash, user_id, shared_link_id, csrf_token, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (token_hash(token), user_id, link_id, csrf_token, now + ttl),
            )
        return NewSession(token, csrf_token, now + ttl)

    def session(self, token: str) -> Session | None:
        """The live session of a cookie, or None (unknown or expired)."""
        hashed = token_hash(token)
        rows = self._rows(
            "SELECT user_id, shared_link_id, csrf_token, expires_at FROM sessions "
            "WHERE token_hash = ? AND expires_at > ?",
            (hashed, time.time()),
        )
        if not rows:
            return None
        [(user_id, link_id, csrf_token, expires_at)] = rows
        user = self.user(user_id) if user_id is not None else None
        link = self._links("id = ?", (link_id,)) if link_id is not None else []
        if user is None and not link:
            return None
        return Session(hashed, csrf_token, expires_at, user, link[0] if link else None)

    def delete_session(self, hashed: str) -> None:
        with self._transaction() as tx:
            tx.execute("DELETE FROM sessions WHERE token_hash = ?", (hashed,))

    # --- API keys --------------------------------------------------------------

    def create_key(self, user_id: int, name: str, scope: str) -> tuple[str, ApiKey]:
        """A new key ``mm_…``: returned here once, stored only as its hash."""
        key = new_api_key()
        with self._transaction() as tx:
            key_id = tx.execute(
                "INSERT INTO api_keys (user_id, name, scope, key_hash, shown, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (user_id, name, scope, token_hash(key), key[:API_KEY_SHOWN], time.time()),
            ).lastrowid
        return key, self._keys("k.id = ?", (key_id,))[0]

    def _keys(self, where: str, parameters: Iterable[object]) -> list[ApiKey]:
        rows = self._rows(
            "SELECT k.id, k.user_id, u.username, k.name, k.scope, k.shown, k.created_at "
            f"FROM api_keys k JOIN users u ON u.id = k.user_id WHERE {where} ORDER BY k.id",
            parameters,
        )
        return [ApiKey(*row) for row in rows]

    def keys(self, user_id: int | None) -> list[ApiKey]:
        """The keys of one user, or with None every key."""
        if user_id is None:
            return self._keys("1", ())
        return self._keys("k.user_id = ?", (user_id,))

    def key_by_id(self, key_id: int) -> ApiKey | None:
        found = self._keys("k.id = ?", (key_id,))
        return found[0] if found else None

    def key_user(self, key: str) -> tuple[User, str] | None:
        """The user a presented key acts for, and the key's scope."""
        rows = self._rows(
            "SELECT user_id, scope FROM api_keys WHERE key_hash = ?", (token_hash(key),)
        )
        if not rows:
            return None
        [(user_id, scope)] = rows
        user = self.user(user_id)
        return (user, scope) if user is not None else None

    def delete_key(self, key_id: int) -> None:
        with self._transaction() as tx:
            tx.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))

    # --- shared links ----------------------------------------------------------

    def create_link(
        self, site_id: str, name: str, password_hash: str | None
    ) -> tuple[str, SharedLink]:
        token = new_token()
        with self._transaction() as tx:
            link_id = tx.execute(
                "INSERT INTO shared_links (site_id, name, token_hash, password_hash, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (site_id, name, token_hash(token), password_hash, time.time()),
            ).lastrowid
        return token, self._links("id = ?", (link_id,))[0]

    def _links(self, where: str, parameters: Iterable[object]) -> list[SharedLink]:
        rows = self._rows(
            "SELECT id, site_id, name, password_hash, created_at FROM shared_links "
            f"WHERE {where} ORDER BY id",
            parameters,
        )
        return [SharedLink(*row) for row in rows]

    def link_by_token(self, token: str) -> SharedLink | None:
        found = self._links("token_hash = ?", (token_hash(token),))
        return found[0] if found else None

    def link_by_id(self, link_id: int) -> SharedLink | None:
        found = self._links("id = ?", (link_id,))
        return found[0] if found else None

    def links(self, sites: Iterable[str] | None) -> list[SharedLink]:
        """The links of ``sites``, or with None of every site."""
        if sites is None:
            return self._links("1", ())
        wanted = sorted(sites)
        return self._links(f"site_id IN ({','.join('?' * len(wanted))})", wanted)

    def delete_link(self, link_id: int) -> None:
        """Revoke: the token and every session unlocked with it stop working."""
        with self._transaction() as tx:
            tx.execute("DELETE FROM shared_links WHERE id = ?", (link_id,))

    # --- invites ---------------------------------------------------------------

    def create_invite(self, user_id: int, ttl: float) -> tuple[str, float]:
        token, expires_at = new_token(), time.time() + ttl
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO invites (token_hash, user_id, expires_at) VALUES (?, ?, ?)",
                (token_hash(token), user_id, expires_at),
            )
        return token, expires_at

    def invite_valid(self, token: str) -> bool:
        return bool(
            self._rows(
                "SELECT 1 FROM invites WHERE token_hash = ? AND expires_at > ?",
                (token_hash(token), time.time()),
            )
        )

    def accept_invite(self, token: str, password_hash: str) -> User | None:
        """Set the invited user's password; the invite works once, before it expires."""
        with self._transaction() as tx:
            rows = tx.execute(
                "DELETE FROM invites WHERE token_hash = ? RETURNING user_id, expires_at",
                (token_hash(token),),
            ).fetchall()
            if not rows or rows[0][1] <= time.time():
                return None
            user_id = rows[0][0]
            tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
        return self.user(user_id)


def database_path(data_dir: Path) -> Path:
    return data_dir / "auth" / "mallard.sqlite3"
