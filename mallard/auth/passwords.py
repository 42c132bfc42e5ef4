"""Password hashing with Argon2id (argon2-cffi), and the rules for a new password."""

from __future__ import annotations

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
MAX_LENGTH = 1024

_hasher = PasswordHasher(type=Type.ID)
# Verified against when a username does not exist, so that answering "no such
# user" takes as long as answering "wrong password".
_UNKNOWN_USER_HASH = _hasher.hash("no account has this password")


class WeakPassword(ValueError):
    """A new password breaks the length rule; the message says which."""


def check_new_password(password: object) -> str:
    if not isinstance(password, str):
        raise WeakPassword("password must be a string")
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise WeakPassword(f"password must be {MIN_LENGTH} to {MAX_LENGTH} characters long")
    return password


def hash_password(password: str) -> str:
    """An Argon2id hash in PHC format (``$argon2id$v=19$m=…``), salted."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; a missing hash costs the same time and is False."""
    try:
        return _hasher.verify(stored_hash or _UNKNOWN_USER_HASH, password) and bool(stored_hash)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    return _hasher.check_needs_rehash(stored_hash)
