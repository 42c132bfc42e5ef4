"""The auth store, password hashing and lockout, for async callers.

Every blocking step (SQLite, Argon2) runs in a worker thread; Argon2 (64 MiB
and tens of milliseconds per hash) at most two at a time, so a burst of logins
cannot exhaust memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import trio

from mallard.auth import passwords
from mallard.auth.lockout import Lockout
from mallard.auth.policy import Principal, User
from mallard.auth.store import AuthStore, NewSession, Session, SharedLink, database_path
from mallard.config import Settings

log = logging.getLogger("mallard.auth")

T = TypeVar("T")
INVITE_TTL = 7 * 86400.0
HASHING_AT_ONCE = 2


class Denied(Exception):
    """A request that may not go on: its status, a message and extra JSON fields."""

    def __init__(
        self, status: int, message: str, *, retry_after: int | None = None, **extra: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.extra = extra


class AuthService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = AuthStore(database_path(settings.data_dir))
        self.lockout = Lockout(settings.login_max_failures, settings.login_lockout)
        self._hashing = trio.CapacityLimiter(HASHING_AT_ONCE)
        self._configured = False  # once True, stays True: passwords are never removed

    async def start(self) -> None:
        """Open the store; apply ``admin_password`` to the built-in admin when it is set."""
        await trio.to_thread.run_sync(self.store.open)
        if self.settings.admin_password is not None:
            await self._apply_admin_password(self.settings.admin_password)

    async def _apply_admin_password(self, password: str) -> None:
        stored = await self.db(self.store.builtin_password_hash)
        if stored is not None and await self.verify(stored, password):
            if not passwords.needs_rehash(stored):
                return
            await self._set_builtin(password, "re-hashed with today's parameters")
        else:
            await self._set_builtin(password, "set from admin_password")

    async def _set_builtin(self, password: str, what: str) -> None:
        new_hash = await self.hash(password)
        user_id = await self.db(self.store.builtin_id)
        await self.db(self.store.set_password, user_id, new_hash, None)
        log.info("admin password %s", what)

    def close(self) -> None:
        self.store.close()

    async def db(self, call: Callable[..., T], *args: object) -> T:
        """A store method, in a worker thread."""
        return await trio.to_thread.run_sync(call, *args)

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(
            passwords.hash_password, password, limiter=self._hashing
        )

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        return await trio.to_thread.run_sync(
            passwords.verify_password, stored_hash, password, limiter=self._hashing
        )

    async def configured(self) -> bool:
        """Has any account a password? Until then only loopback clients may read."""
        if not self._configured:
            self._configured = await self.db(self.store.configured)
        return self._configured

    def new_session(self, **owner: int) -> Callable[[], NewSession]:
        return lambda: self.store.create_session(self.settings.session_ttl, **owner)

    # --- steps guarded by the lockout ------------------------------------------

    def _check_lockout(self, client: str) -> None:
        wait = self.lockout.retry_after(client)
        if wait is not None:
            raise Denied(429, f"too many failed attempts; try again in {wait} s", retry_after=wait)

    async def _judge(self, client: str, stored_hash: str | None, password: str) -> bool:
        """Verify a password and count the outcome for the lockout."""
        if await self.verify(stored_hash, password):
            self.lockout.succeeded(client)
            return True
        self.lockout.failed(client)
        return False

    async def login(self, client: str, username: str, password: str) -> tuple[User, NewSession]:
        self._check_lockout(client)
        found = await self.db(self.store.user_with_hash, username)
        user, stored = found if found is not None else (None, None)
        if not await self._judge(client, stored, password) or user is None:
            raise Denied(401, "wrong username or password")
        return user, await self.db(self.new_session(user_id=user.id))

    async def unlock_link(self, client: str, link: SharedLink, password: str) -> NewSession:
        """A password-protected shared link: the right password opens a session for it."""
        self._check_lockout(client)
        if not await self._judge(client, link.password_hash, password):
            raise Denied(401, "wrong password for this shared link")
        return await self.db(self.new_session(link_id=link.id))

    async def change_password(
        self, client: str, principal: Principal, current: str, new: str
    ) -> None:
        """The user's own password; every other session of theirs ends."""
        assert principal.user is not None
        self._check_lockout(client)
        found = await self.db(self.store.user_with_hash, principal.user.username)
        stored = found[1] if found is not None else None
        if not await self._judge(client, stored, current):
            raise Denied(403, "current_password is wrong")
        new_hash = await self.hash(new)
        await self.db(self.store.set_password, principal.user.id, new_hash, principal.session)

    async def session(self, token: str) -> Session | None:
        return await self.db(self.store.session, token)
