"""Custom roles in the database, and the resolution of role names to permissions.

Each change is one transaction with its audit record (``role.create``, ``role.update``,
``role.delete``). Resolution reads the custom roles through a per-process cache of
:data:`CACHE_SECONDS`: a change made through this process applies here at once, one made by another
(the CLI, another replica) within that time, as for token revocations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import select

from keybroker.audit import log as audit
from keybroker.auth import roles
from keybroker.auth.roles import Role
from keybroker.auth.tokens import Principal
from keybroker.errors import Conflict, Forbidden, InvalidInput, NotFound
from keybroker.store.db import Database
from keybroker.store.models import Role as RoleRow

CACHE_SECONDS = 5.0


def _row_role(row: RoleRow) -> Role:
    return Role(row.name, frozenset(row.permissions), row.description, False)


class RoleStore:
    def __init__(
        self,
        db: Database,
        *,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._ttl = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._custom: dict[str, frozenset[str]] = {}
        self._read_at = float("-inf")

    # --- resolution ---------------------------------------------------------------------------

    def _custom_map(self) -> dict[str, frozenset[str]]:
        now = self._clock()
        with self._lock:
            if now - self._read_at < self._ttl:
                return self._custom
        with self._db.session() as s:
            rows = s.execute(select(RoleRow.name, RoleRow.permissions)).all()
        custom = {name: frozenset(perms) for name, perms in rows}
        with self._lock:
            self._custom, self._read_at = custom, now
        return custom

    def _forget(self) -> None:
        with self._lock:
            self._read_at = float("-inf")

    def permissions_of(self, names: Iterable[str]) -> frozenset[str]:
        return roles.resolve(names, self._custom_map())

    def expand(self, principal: Principal) -> Principal:
        """``principal`` with the permissions of its roles added."""
        if not principal.roles:
            return principal
        return replace(principal, permissions=principal.permissions | self.permissions_of(principal.roles))

    def unknown(self, names: Iterable[str]) -> list[str]:
        custom = self._custom_map()
        return sorted(n for n in names if n not in roles.BUILTIN and n not in custom)

    # --- listing ------------------------------------------------------------------------------

    def list(self, *, actor: str | None = None) -> list[Role]:
        """Built-in roles first, then the custom ones by name. With ``actor``, audited."""
        with self._db.session() as s:
            rows = list(s.scalars(select(RoleRow).order_by(RoleRow.name)))
            if actor is not None:
                audit.append(s, actor=actor, action="role.search", outcome="success")
        return [*roles.builtin_roles(), *(_row_role(r) for r in rows)]

    def get(self, name: str, *, actor: str | None = None) -> Role:
        """One role. With ``actor``, audited (``role.retrieve``)."""
        roles.check_name(name)
        with self._db.session() as s:
            if name in roles.BUILTIN:
                text, perms = roles.BUILTIN[name]
                found: Role | None = Role(name, perms, text, True)
            else:
                row = s.get(RoleRow, name)
                found = None if row is None else _row_role(row)
            if found is None:
                raise NotFound(f"no role {name!r}")
            if actor is not None:
                audit.append(s, actor=actor, action="role.retrieve", object_id=name, outcome="success")
        return found

    # --- changes ------------------------------------------------------------------------------

    @staticmethod
    def _check_grant(granter: Principal | None, permissions: Iterable[str]) -> None:
        if granter is None:  # the local operator (the data dir's owner)
            return
        missing = roles.not_held(granter, permissions)
        if missing:
            raise Forbidden(
                f"a role can hold only permissions its author holds: you lack {', '.join(missing)}",
                permission=missing[0],
            )

    def create(
        self,
        name: str,
        permissions: Sequence[str],
        *,
        actor: str,
        description: str | None = None,
        granter: Principal | None = None,
    ) -> Role:
        """A new custom role. ``granter``: the caller, who must hold every permission given (None: the
        local operator)."""
        roles.check_new_name(name)
        perms = roles.check_permissions(permissions)
        roles.check_description(description)
        self._check_grant(granter, perms)
        now = datetime.now(UTC)
        with self._db.session() as s:
            if s.get(RoleRow, name) is not None:
                raise Conflict(f"role {name!r} exists")
            s.add(
                RoleRow(
                    name=name,
                    permissions=sorted(perms),
                    description=description,
                    created_at=now,
                    updated_at=now,
                    created_by=actor,
                )
            )
            audit.append(
                s,
                actor=actor,
                action="role.create",
                object_id=name,
                outcome="success",
                details={"permissions": sorted(perms), "description": description},
            )
        self._forget()
        return Role(name, perms, description, False)

    def update(
        self,
        name: str,
        permissions: Sequence[str],
        *,
        actor: str,
        description: str | None = None,
        granter: Principal | None = None,
    ) -> Role:
        """Replace a custom role's permissions (and description). The granter must hold every
        permission the role has after the change, and every one it loses (so nobody narrows a role
        they could not have written)."""
        roles.check_name(name)
        if name in roles.BUILTIN:
            raise Conflict(f"{name!r} is a built-in role and cannot be changed")
        perms = roles.check_permissions(permissions)
        roles.check_description(description)
        with self._db.session() as s:
            row = s.get(RoleRow, name, with_for_update=True)
            if row is None:
                raise NotFound(f"no role {name!r}")
            before = frozenset(row.permissions)
            self._check_grant(granter, perms | before)
            row.permissions, row.description, row.updated_at = sorted(perms), description, datetime.now(UTC)
            audit.append(
                s,
                actor=actor,
                action="role.update",
                object_id=name,
                outcome="success",
                details={
                    "permissions": sorted(perms),
                    "added": sorted(perms - before),
                    "removed": sorted(before - perms),
                    "description": description,
                },
            )
        self._forget()
        return Role(name, perms, description, False)

    def delete(self, name: str, *, actor: str, granter: Principal | None = None) -> None:
        """Delete a custom role: tokens and sessions that name it lose what it granted."""
        roles.check_name(name)
        if name in roles.BUILTIN:
            raise Conflict(f"{name!r} is a built-in role and cannot be deleted")
        with self._db.session() as s:
            row = s.get(RoleRow, name, with_for_update=True)
            if row is None:
                raise NotFound(f"no role {name!r}")
            self._check_grant(granter, row.permissions)
            perms = sorted(row.permissions)
            s.delete(row)
            audit.append(
                s,
                actor=actor,
                action="role.delete",
                object_id=name,
                outcome="success",
                details={"permissions": perms},
            )
        self._forget()

    def check_token_grant(
        self, granter: Principal, permissions: Sequence[str], role_names: Sequence[str]
    ) -> None:
        """Before a token is minted for ``granter`` (``POST /kbs/v1/tokens``, the console): it may
        carry only permissions, and roles whose permissions, the granter holds (``*:*`` only from
        ``*:*``)."""
        missing = roles.not_held(granter, permissions)
        if missing:
            raise Forbidden(
                f"a token can carry only permissions its issuer holds: you lack {', '.join(missing)}",
                permission=missing[0],
            )
        self.check_grantable(granter, role_names)

    def check_grantable(self, granter: Principal | None, role_names: Sequence[str]) -> None:
        """Before a token names ``role_names``: each exists, and the granter holds what they grant."""
        unknown = self.unknown(role_names)
        if unknown:
            raise InvalidInput(f"no role {unknown[0]!r}", field="roles")
        if granter is not None:
            missing = roles.not_held(granter, self.permissions_of(role_names))
            if missing:
                raise Forbidden(
                    f"a token can carry only permissions its issuer holds: you lack {', '.join(missing)}",
                    permission=missing[0],
                )
