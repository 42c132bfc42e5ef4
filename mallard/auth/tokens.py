"""Random secrets (session ids, API keys, invite and share tokens) and how they are kept.

Only the SHA-256 of a token is stored: the database alone opens nothing. Tokens
carry 256 bits of randomness, so an unsalted fast hash is enough.
"""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "mm_"
API_KEY_SHOWN = len(API_KEY_PREFIX) + 6  # "mm_Ab3dE9", to recognise a key in a list


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
