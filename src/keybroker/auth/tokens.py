"""Admin and workload bearer tokens: JWTs signed (ES384) by the service's own key.

Permissions are named as in Intel SecL (``keys:create``, ``key_transfer_policies:search``, ``*:*``).
Workload identities carry ``client_permissions`` (the seed's SKC user labels, e.g. ``nginx,USA``).
The signing key lives in the data dir (0600); tokens are minted locally by an operator who can read
it (``keybroker token create``) or at ``operator init``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from keybroker.errors import InvalidInput, Unauthenticated

ALG = "ES384"
ISSUER = "keybroker"
AUDIENCE = "keybroker"

PERMISSIONS = (
    "keys:create",
    "keys:register",
    "keys:search",
    "keys:retrieve",
    "keys:delete",
    "keys:certify",
    "keys:transfer",
    "key_transfer_policies:create",
    "key_transfer_policies:retrieve",
    "key_transfer_policies:update",
    "key_transfer_policies:delete",
    "key_transfer_policies:search",
    "audit:read",
    "sys:seal",
    "resources:write",
    "attestation:verify",
    "*:*",
)
_CLIENT_PERMISSION = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_TTL = re.compile(r"^(\d+)([smhd])$")


@dataclass(frozen=True)
class Principal:
    subject: str
    permissions: frozenset[str]
    client_permissions: frozenset[str] = field(default_factory=frozenset)
    token_id: str | None = None

    def allows(self, permission: str) -> bool:
        service = permission.split(":", 1)[0]
        return (
            permission in self.permissions or "*:*" in self.permissions or f"{service}:*" in self.permissions
        )


def parse_ttl(text: str) -> timedelta:
    m = _TTL.match(text.strip())
    if not m:
        raise InvalidInput(f"ttl {text!r} is not a duration like 30m, 1h or 7d", field="ttl")
    n, unit = int(m.group(1)), m.group(2)
    delta = {
        "s": timedelta(seconds=n),
        "m": timedelta(minutes=n),
        "h": timedelta(hours=n),
        "d": timedelta(days=n),
    }[unit]
    if delta <= timedelta(0) or delta > timedelta(days=366):
        raise InvalidInput(f"ttl {text!r} must be between 1s and 366d", field="ttl")
    return delta


def load_or_create_signing_key(path: Path) -> ECKey:
    if path.exists():
        return ECKey.import_key(path.read_bytes())
    key = ECKey.generate_key("P-384", private=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.as_pem(private=True))
    return key


def load_signing_key(path: Path) -> ECKey:
    try:
        return ECKey.import_key(path.read_bytes())
    except FileNotFoundError:
        raise InvalidInput(
            f"no token signing key at {path}: is this the service's data dir, and has it started once?",
            field="data_dir",
        ) from None


class TokenService:
    def __init__(self, key: ECKey) -> None:
        self._key = key

    def mint(
        self,
        subject: str,
        permissions: Sequence[str],
        *,
        ttl: timedelta = timedelta(hours=1),
        client_permissions: Sequence[str] = (),
        now: datetime | None = None,
    ) -> str:
        for p in permissions:
            if p not in PERMISSIONS:
                raise InvalidInput(
                    f"unknown permission {p!r}; known: {', '.join(PERMISSIONS)}", field="permissions"
                )
        for cp in client_permissions:
            if not _CLIENT_PERMISSION.match(cp):
                raise InvalidInput(
                    f"client permission {cp!r} has characters outside [A-Za-z0-9_.:-]",
                    field="client_permissions",
                )
        issued = now or datetime.now(UTC)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": int(issued.timestamp()),
            "nbf": int(issued.timestamp()),
            "exp": int((issued + ttl).timestamp()),
            "jti": str(uuid.uuid4()),
            "permissions": sorted(set(permissions)),
            "client_permissions": sorted(set(client_permissions)),
        }
        return jwt.encode(
            {"alg": ALG, "typ": "JWT", "kid": self._key.thumbprint()}, claims, self._key, algorithms=[ALG]
        )

    def verify(self, token: str, *, now: datetime | None = None) -> Principal:
        """Check signature, issuer, audience and validity window; raise Unauthenticated otherwise."""
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALG])
        except (JoseError, ValueError):
            raise Unauthenticated("the bearer token is not a valid keybroker token") from None
        claims = decoded.claims
        at = int((now or datetime.now(UTC)).timestamp())
        if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE:
            raise Unauthenticated("the bearer token was not issued by keybroker for keybroker")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int) or not isinstance(nbf, int):
            raise Unauthenticated("the bearer token has no validity window")
        if at >= exp:
            raise Unauthenticated("the bearer token has expired")
        if at < nbf - 60:
            raise Unauthenticated("the bearer token is not valid yet")
        perms = claims.get("permissions", [])
        cperms = claims.get("client_permissions", [])
        if not isinstance(perms, list) or not isinstance(cperms, list):
            raise Unauthenticated("the bearer token's permissions are malformed")
        return Principal(
            subject=str(claims.get("sub", "")),
            permissions=frozenset(str(p) for p in perms),
            client_permissions=frozenset(str(p) for p in cperms),
            token_id=str(claims.get("jti")) if claims.get("jti") else None,
        )
