"""Roles: named sets of the SecL permissions (``keybroker.auth.tokens.PERMISSIONS``).

Four are built in and cannot be changed; operators add their own (``/kbs/v1/roles``, ``keybroker
role``), stored in the database (:mod:`keybroker.auth.rolestore`). A token or a console session names
roles; they are resolved to permissions each time it is used, so a change to a role applies to every
token and session that names it (within the role cache's few seconds), and a role that no longer
exists grants nothing.

Nobody grants what they do not hold: a role or a token can be given a permission only by a caller
who has it (:func:`not_held`), so ``roles:create`` or ``tokens:create`` alone is no way to ``*:*``.

Pure: names, the built-in sets, resolution and the grant check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from keybroker.auth.tokens import MAX_ROLES, PERMISSIONS, Principal, check_role_names
from keybroker.auth.tokens import check_role_name as check_name
from keybroker.errors import InvalidInput

__all__ = [
    "BUILTIN",
    "MAX_ROLES",
    "Role",
    "builtin_roles",
    "check_description",
    "check_name",
    "check_new_name",
    "check_permissions",
    "check_role_names",
    "not_held",
    "resolve",
]

MAX_DESCRIPTION = 256

_READ_KEYS_AND_POLICIES = (
    "keys:search",
    "keys:retrieve",
    "key_transfer_policies:search",
    "key_transfer_policies:retrieve",
)

#: The built-in roles (read-only): what each lets a person do.
BUILTIN: Mapping[str, tuple[str, frozenset[str]]] = MappingProxyType(
    {
        "key-admin": (
            "create, import, register, certify and delete keys; read policies to bind keys to them",
            frozenset(
                {
                    "keys:create",
                    "keys:register",
                    "keys:delete",
                    "keys:certify",
                    *_READ_KEYS_AND_POLICIES,
                }
            ),
        ),
        "policy-admin": (
            "write, test and delete key-transfer policies; read keys",
            frozenset(
                {
                    "key_transfer_policies:create",
                    "key_transfer_policies:update",
                    "key_transfer_policies:delete",
                    *_READ_KEYS_AND_POLICIES,
                }
            ),
        ),
        "auditor": (
            "read the audit log, keys, policies, tokens and roles; change nothing",
            frozenset({"audit:read", "tokens:search", "roles:search", *_READ_KEYS_AND_POLICIES}),
        ),
        "operator": (
            "seal the key store (unsealing takes shares, not a role), read the audit log, list and "
            "revoke tokens, refresh the collateral cache from its configured source",
            frozenset(
                {
                    "sys:seal",
                    "audit:read",
                    "tokens:search",
                    "tokens:delete",
                    "roles:search",
                    "collateral:update",
                }
            ),
        ),
    }
)


@dataclass(frozen=True)
class Role:
    name: str
    permissions: frozenset[str]
    description: str | None
    builtin: bool


def builtin_roles() -> list[Role]:
    return [Role(name, perms, text, True) for name, (text, perms) in BUILTIN.items()]


def check_new_name(name: str) -> str:
    """A name a custom role may take: well formed and not a built-in one."""
    check_name(name)
    if name in BUILTIN:
        raise InvalidInput(f"{name!r} is a built-in role and cannot be redefined", field="name")
    return name


def check_permissions(permissions: Sequence[str], *, field: str = "permissions") -> frozenset[str]:
    """Known SecL permissions, at least one (a role that grants nothing is a mistake)."""
    if not permissions:
        raise InvalidInput("a role grants at least one permission", field=field)
    for p in permissions:
        if p not in PERMISSIONS:
            raise InvalidInput(f"unknown permission {p!r}; known: {', '.join(PERMISSIONS)}", field=field)
    return frozenset(permissions)


def check_description(text: str | None) -> str | None:
    if text is not None and not 1 <= len(text) <= MAX_DESCRIPTION:
        raise InvalidInput(f"description must be 1 to {MAX_DESCRIPTION} characters", field="description")
    return text


def resolve(names: Iterable[str], custom: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The permissions the roles ``names`` grant: built-in ones first, then ``custom``; a name that is
    neither grants nothing."""
    out: set[str] = set()
    for n in names:
        if n in BUILTIN:
            out |= BUILTIN[n][1]
        else:
            out |= custom.get(n, frozenset())
    return frozenset(out)


def not_held(holder: Principal, permissions: Iterable[str]) -> list[str]:
    """The permissions of ``permissions`` that ``holder`` could not grant, sorted: ``*:*`` needs
    ``*:*``; any other one needs to be allowed to the holder."""
    missing = set()
    for p in permissions:
        held = "*:*" in holder.permissions if p == "*:*" else holder.allows(p)
        if not held:
            missing.add(p)
    return sorted(missing)
