"""Who may do what on which site: pure functions over :class:`Principal`.

Roles are per site: a ``viewer`` reads the site's stats and nothing else, an
``admin`` also manages its shared links and its viewers and admins, an
``owner`` also manages its owners. A superuser (the built-in ``admin`` account,
or a user a superuser made one) holds every role on every site and alone
deletes accounts. An API key acts for the user who created it, limited to its
scope: ``read`` reads, ``admin`` does whatever that user may. A shared link
reads one site. ``loopback`` is the access of local clients while no password
exists at all: reading only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

ROLES = ("viewer", "admin", "owner")
_RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}
SCOPES = ("read", "admin")

Via = Literal["session", "api_key", "shared_link", "loopback"]


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    username: str
    superuser: bool = False
    builtin: bool = False
    roles: Mapping[str, str] = dataclasses.field(default_factory=dict)  # site -> role
    has_password: bool = True

    def as_json(self, sites: frozenset[str] | None = None) -> dict[str, object]:
        """The user as the API shows it; ``sites`` limits which roles are shown."""
        roles = {s: r for s, r in sorted(self.roles.items()) if sites is None or s in sites}
        return {
            "id": self.id,
            "username": self.username,
            "superuser": self.superuser,
            "roles": roles,
            "active": self.has_password,
        }


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is asking, and through what."""

    via: Via
    user: User | None = None
    scope: str = "admin"  # an API key's scope; sessions may do all their user may
    site_id: str | None = None  # the one site of a shared link
    session: str | None = None  # the session's token hash (sessions only)
    csrf_token: str | None = None  # sessions only


LOOPBACK = Principal(via="loopback", scope="read")


def role_rank(role: str | None) -> int:
    return _RANK.get(role or "", 0)


def role_on(principal: Principal, site_id: str) -> str | None:
    user = principal.user
    if user is None:
        return None
    return "owner" if user.superuser else user.roles.get(site_id)


def can_read(principal: Principal, site_id: str) -> bool:
    if principal.via == "loopback":
        return True
    if principal.via == "shared_link":
        return principal.site_id == site_id
    return role_on(principal, site_id) is not None


def may_administer(principal: Principal) -> bool:
    """Anything beyond reading: needs an account that manages some site, and no read-only key."""
    user = principal.user
    if user is None or principal.scope != "admin":
        return False
    return user.superuser or any(role_rank(role) >= _RANK["admin"] for role in user.roles.values())


def can_manage_site(principal: Principal, site_id: str) -> bool:
    """Shared links and members of ``site_id``."""
    return may_administer(principal) and role_rank(role_on(principal, site_id)) >= _RANK["admin"]


def can_grant(principal: Principal, site_id: str, role: str | None) -> bool:
    """Give (or take away) ``role`` on ``site_id``: at most one's own role there."""
    return can_manage_site(principal, site_id) and role_rank(role) <= role_rank(
        role_on(principal, site_id)
    )


def managed_sites(principal: Principal) -> frozenset[str] | None:
    """Sites whose members and links ``principal`` manages; None means every site."""
    user = principal.user
    if user is None or not may_administer(principal):
        return frozenset()
    if user.superuser:
        return None
    return frozenset(s for s, r in user.roles.items() if role_rank(r) >= _RANK["admin"])


def is_superuser(principal: Principal) -> bool:
    return principal.user is not None and principal.user.superuser and principal.scope == "admin"


def can_delete_user(principal: Principal, target: User) -> bool:
    """Only superusers delete accounts; never the built-in admin, never oneself."""
    me = principal.user
    return is_superuser(principal) and me is not None and not target.builtin and target.id != me.id


def can_manage_key(principal: Principal, owner_id: int) -> bool:
    """List or revoke an API key: one's own (whatever one's role), or any for a superuser."""
    me = principal.user
    if me is None or principal.scope != "admin":
        return False
    return me.superuser or me.id == owner_id
