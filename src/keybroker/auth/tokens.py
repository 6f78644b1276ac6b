"""Admin and workload bearer tokens: JWTs signed (ES384) by the service's own key.

Permissions are named as in Intel SecL (``keys:create``, ``key_transfer_policies:search``, ``*:*``).
Workload identities carry ``client_permissions`` (the seed's SKC user labels, e.g. ``nginx,USA``).

Pure: signing, verifying and the claims. Which keys and which tokens the broker still accepts (every
token is recorded when it is issued, and can be revoked) is ``keybroker.auth.registry``'s.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
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
    "sys:integrity",
    "resources:write",
    "attestation:verify",
    "collateral:update",
    "tokens:search",
    "tokens:create",
    "tokens:delete",
    "roles:search",
    "roles:create",
    "roles:update",
    "roles:delete",
    "tpm_aks:create",
    "tpm_aks:search",
    "tpm_aks:retrieve",
    "tpm_aks:approve",
    "tpm_aks:revoke",
    "*:*",
)
_CLIENT_PERMISSION = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
#: Subjects: who a token is for, as it appears in the audit log (``token:<subject>#<jti>``).
_SUBJECT = re.compile(r"^[A-Za-z0-9_.@:\-]{1,128}$")
#: Role names (``keybroker.auth.roles``): lower case, digits and hyphens, starting with a letter.
ROLE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
#: A token or a session names at most this many roles.
MAX_ROLES = 32
_TTL = re.compile(r"^(\d+)([smhd])$")
#: Longer tokens are refused before any parsing (ours are about 700 characters).
MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True)
class Principal:
    subject: str
    permissions: frozenset[str]
    client_permissions: frozenset[str] = field(default_factory=frozenset)
    token_id: str | None = None
    #: The ``kid`` of the key that signed the token.
    key_id: str | None = None
    #: Roles named by the token or session (``keybroker.auth.roles``); ``permissions`` includes what
    #: they granted when it was resolved.
    roles: frozenset[str] = field(default_factory=frozenset)
    #: Who vouches for the subject: "token" (a keybroker bearer token), "oidc" (the configured
    #: OpenID Connect provider), "dev" (the console's dev login under --dev).
    source: str = "token"
    #: The person's e-mail address as the OpenID provider gave it (for the audit log).
    email: str | None = None

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


def key_id(key: ECKey) -> str:
    """A signing key's ``kid``: its RFC 7638 thumbprint (SHA-256, base64url)."""
    return str(key.thumbprint())


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


@dataclass(frozen=True)
class IssuedToken:
    """A token just signed, and what it says (recorded by the registry; the token itself never is)."""

    token: str
    jti: str
    key_id: str
    subject: str
    permissions: tuple[str, ...]
    client_permissions: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    roles: tuple[str, ...] = ()


def check_role_name(name: str, *, field: str = "name") -> str:
    if not isinstance(name, str) or not ROLE_NAME.match(name):
        raise InvalidInput(
            f"role name {name!r} must be 1 to 63 characters of a-z, 0-9 and '-', starting with a letter",
            field=field,
        )
    return name


def check_role_names(names: Sequence[str], *, field: str = "roles") -> tuple[str, ...]:
    if len(names) > MAX_ROLES:
        raise InvalidInput(f"at most {MAX_ROLES} roles", field=field)
    for n in names:
        check_role_name(n, field=field)
    return tuple(sorted(set(names)))


def check_subject(subject: str) -> str:
    if not _SUBJECT.match(subject):
        raise InvalidInput(
            f"subject {subject!r} must be 1 to 128 characters of [A-Za-z0-9_.@:-]", field="subject"
        )
    return subject


def issue(
    key: ECKey,
    subject: str,
    permissions: Sequence[str],
    *,
    ttl: timedelta = timedelta(hours=1),
    client_permissions: Sequence[str] = (),
    roles: Sequence[str] = (),
    now: datetime | None = None,
) -> IssuedToken:
    """Sign a token for ``subject`` with ``key``, after checking every claim."""
    check_subject(subject)
    role_names = check_role_names(roles)
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
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    expires = issued + ttl
    jti = str(uuid.uuid4())
    perms, cperms = tuple(sorted(set(permissions))), tuple(sorted(set(client_permissions)))
    kid = key_id(key)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": jti,
        "permissions": list(perms),
        "client_permissions": list(cperms),
    }
    if role_names:
        claims["roles"] = list(role_names)
    token = jwt.encode({"alg": ALG, "typ": "JWT", "kid": kid}, claims, key, algorithms=[ALG])
    return IssuedToken(token, jti, kid, subject, perms, cperms, issued, expires, role_names)


def unverified_key_id(token: str) -> str:
    """The ``kid`` in a token's header, unverified: only to pick the key to verify it with."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise Unauthenticated("the bearer token is not a valid keybroker token")
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):
        raise Unauthenticated("the bearer token is not a valid keybroker token") from None
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("the bearer token names no signing key (kid)")
    return kid


def verify(token: str, keys: Mapping[str, ECKey], *, now: datetime | None = None) -> Principal:
    """Check the signature (by the key of ``keys`` its ``kid`` names), issuer, audience, validity
    window and the claims' shape; raise Unauthenticated otherwise."""
    kid = unverified_key_id(token)
    key = keys.get(kid)
    if key is None:
        raise Unauthenticated("the bearer token was not signed by a key of this broker")
    try:
        decoded = jwt.decode(token, key, algorithms=[ALG])
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
    roles = claims.get("roles", [])
    jti = claims.get("jti")
    if not isinstance(perms, list) or not isinstance(cperms, list) or not isinstance(roles, list):
        raise Unauthenticated("the bearer token's permissions are malformed")
    if not isinstance(jti, str) or not jti:
        raise Unauthenticated("the bearer token has no id (jti)")
    return Principal(
        subject=str(claims.get("sub", "")),
        permissions=frozenset(str(p) for p in perms),
        client_permissions=frozenset(str(p) for p in cperms),
        token_id=jti,
        key_id=kid,
        roles=frozenset(str(r) for r in roles),
    )


class TokenService:
    """Sign and verify with one key, nothing recorded (the registry adds records and revocation)."""

    def __init__(self, key: ECKey) -> None:
        self._key = key
        self._keys = {key_id(key): key}

    def mint(
        self,
        subject: str,
        permissions: Sequence[str],
        *,
        ttl: timedelta = timedelta(hours=1),
        client_permissions: Sequence[str] = (),
        now: datetime | None = None,
    ) -> str:
        return issue(
            self._key, subject, permissions, ttl=ttl, client_permissions=client_permissions, now=now
        ).token

    def verify(self, token: str, *, now: datetime | None = None) -> Principal:
        return verify(token, self._keys, now=now)
