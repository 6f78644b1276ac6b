"""Which bearer tokens the broker accepts: every token is recorded when it is issued, and accepted
only while its record says so.

A token is accepted when (1) its signature verifies with a signing key on record, (2) that key is the
current one (``keybroker token rotate-key`` retires every other) and (3) the one in this replica's
data dir, (4) its ``jti`` is on record for that key and (5) not revoked, besides the claims
:func:`keybroker.auth.tokens.verify` checks. So a token minted from a copy of the signing key without
a record, or before records existed, is refused, and ``keybroker token list`` shows every token that
works. (3) because the keys on record are public keys in clear: whoever can write the database could
add one of theirs; the data dir's key file is created there or written from its sealed copy opened
under the root key (``keybroker.replica``), which the database alone cannot forge.

Tokens are not tied to the seal: as Vault's, they outlive seal and unseal. To cut off tokens, revoke
them (one) or rotate the signing key (all).

The records are read through a small per-process cache, so that checking them costs a dictionary
lookup on the hot paths (admin calls, workload tokens at ``/kbs/v1`` transfer): each token's record
and the set of signing keys are read again after :data:`CACHE_SECONDS`. A revocation or rotation
through this process takes effect here at once; one by another process (the CLI, another replica)
within :data:`CACHE_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from joserfc.jwk import ECKey
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from keybroker.audit import log as audit
from keybroker.auth import tokens
from keybroker.auth.tokens import IssuedToken, Principal
from keybroker.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from keybroker.store.db import Database, lock_transaction
from keybroker.store.models import BearerToken, BearerTokenKey, SharedSecret

log = logging.getLogger("keybroker.auth")

#: The current signing key's name in ``shared_secrets`` is this and its kid.
SHARED_KEY_PREFIX = "token-signing-key:"
#: How long a token's record or the set of signing keys is trusted from memory, seconds.
CACHE_SECONDS = 5.0
#: At most this many token records in memory (least recently used out).
CACHE_ENTRIES = 10_000
#: Records of tokens expired longer than this are deleted when a token is issued.
KEEP_EXPIRED = timedelta(days=7)
#: ``lock_transaction`` key serializing the changes of the current signing key ("kbtokkey"): the
#: first key recorded, a rotation.
SIGNING_KEY_LOCK = int.from_bytes(b"kbtokkey", "big")
#: The current signing key: the one not retired. Only one can be (recorded under
#: :data:`SIGNING_KEY_LOCK`); a database from before that lock may hold two, and then the oldest
#: (then the smallest kid) is the current one for every replica alike.
_CURRENT_KID = (
    select(BearerTokenKey.kid)
    .where(BearerTokenKey.retired_at.is_(None))
    .order_by(BearerTokenKey.created_at, BearerTokenKey.kid)
    .limit(1)
)

TokenStatus = Literal["active", "expired", "revoked", "key retired"]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TokenRecord:
    """A recorded token (never the token itself)."""

    jti: str
    key_id: str
    subject: str
    permissions: tuple[str, ...]
    client_permissions: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    issued_by: str
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    key_retired: bool
    roles: tuple[str, ...] = ()

    def status(self, now: datetime) -> TokenStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.key_retired:
            return "key retired"
        if now >= self.expires_at:
            return "expired"
        return "active"


@dataclass(frozen=True)
class _Key:
    public: ECKey
    retired: bool


@dataclass(frozen=True)
class _Verdict:
    """A token record as the cache holds it: None if the token is accepted, else why not."""

    refusal: str | None
    read_at: float


class TokenRegistry:
    """Issue, verify, list and revoke bearer tokens, and rotate the key that signs them.

    ``key_file``: the private signing key in the data dir, read at each issue (so a rotation by the
    CLI is seen by a running server); verification uses the public keys on record.
    """

    def __init__(
        self,
        db: Database,
        key_file: Path,
        *,
        cache_seconds: float = CACHE_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self.db = db
        self._key_file = key_file
        self._ttl = cache_seconds
        self._max_entries = cache_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._keys_read_at = float("-inf")
        #: The kid of the data dir's key file, read with the keys (None: no readable key file).
        self._local_kid: str | None = None
        self._verdicts: OrderedDict[str, _Verdict] = OrderedDict()

    # --- schema and keys -------------------------------------------------------------------

    @property
    def key_file(self) -> Path:
        return self._key_file

    @property
    def retired_file(self) -> Path:
        """The kids of the signing keys this data dir has seen retired (one a line, 0600): never
        taken back from the database, whose record of which key is current can be rolled back by
        whoever can write it (with a sealed copy of a retired key saved from before the rotation)."""
        return self._key_file.with_suffix(".retired")

    def retired_kids(self) -> set[str]:
        try:
            return set(self.retired_file.read_text().split())
        except FileNotFoundError:
            return set()

    def _remember_retired(self, kids: Sequence[str]) -> None:
        if not kids:
            return
        fd = os.open(self.retired_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write("".join(f"{kid}\n" for kid in kids))
            f.flush()
            os.fsync(f.fileno())

    def current_kid(self) -> str | None:
        """The kid of the current signing key on record (None: a new broker, none yet)."""
        with self._db.session() as s:
            return s.scalars(_CURRENT_KID).first()

    def register_key(self) -> None:
        """At start. A new broker (no signing key on record): the data dir's key (created if absent)
        becomes the current one. Otherwise the current key is the shared one: a data dir without a
        key file gets it from the database once unsealed (``keybroker.replica``), and one whose file
        holds another key is told so."""
        current = self.current_kid()
        if current is None:
            key = tokens.load_or_create_signing_key(self._key_file)
            try:
                with self._db.session() as s:
                    self._current_key(s, key)
            except Conflict as exc:  # another replica recorded its key at the same moment
                log.warning("%s", exc.detail)
            return
        try:
            kid = tokens.key_id(tokens.load_signing_key(self._key_file))
        except InvalidInput:
            log.info(
                "the token signing key (kid %s) is written into %s from the database once this replica "
                "is unsealed",
                current,
                self._key_file,
            )
            return
        if kid != current:
            log.warning(
                "the token signing key in %s (kid %s) is not the broker's current one (%s): it is "
                "replaced by the current one from the database once this replica is unsealed",
                self._key_file,
                kid,
                current,
            )

    def local_key(self) -> ECKey | None:
        """The signing key in the data dir (None: no readable key file)."""
        try:
            return ECKey.import_key(self._key_file.read_bytes())
        except (OSError, ValueError):
            return None

    def write_key_file(self, pem: bytes) -> None:
        """Replace the data dir's key file whole (0600) with ``pem`` (the current key, from the
        database), for the local ``keybroker token`` commands. The key it replaces is remembered
        as retired; a key remembered so is refused (``Conflict``)."""
        kid = tokens.key_id(ECKey.import_key(pem))
        if kid in self.retired_kids():
            raise Conflict(
                f"the token signing key kid {kid} was retired, as {self.retired_file} records: the "
                "database names it current again (restored from a backup from before the rotation, or "
                "rolled back by whoever can write it); it is not taken"
            )
        local = self.local_key()
        if local is not None and tokens.key_id(local) != kid:
            self._remember_retired([tokens.key_id(local)])
        tmp = self._key_file.with_name(f".{self._key_file.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._key_file)
        with self._lock:
            self._keys_read_at = float("-inf")

    def _current_key(self, s: Session, key: ECKey) -> str:
        """The kid of ``key`` if it is the current signing key (recorded now if there is none yet).

        Replicas starting together on a new database each come with a key of their own: the first
        one is recorded under :data:`SIGNING_KEY_LOCK`, and the others, looking again once they
        hold the lock, find it and are told (``Conflict``), so one key only is ever current."""
        kid = tokens.key_id(key)
        current = s.scalars(_CURRENT_KID).first()
        if current == kid:
            return kid
        if current is None:
            lock_transaction(s, SIGNING_KEY_LOCK)
            current = s.scalars(_CURRENT_KID).first()
            if current == kid:
                return kid
        row = s.get(BearerTokenKey, kid)
        if row is not None and row.retired_at is not None:
            raise Conflict(
                f"the token signing key in {self._key_file} (kid {kid}) was retired by a rotation: the "
                "current one is written here from the database once a replica on this data dir is unsealed "
                "and a replica on the data dir where 'keybroker token rotate-key' ran has been unsealed since"
            )
        if current is not None:
            raise Conflict(
                f"the token signing key in {self._key_file} (kid {kid}) is not the broker's current one "
                f"({current}): it is written here from the database once a replica on this data dir is "
                "unsealed"
            )
        s.add(BearerTokenKey(kid=kid, public_jwk=key.as_dict(private=False), created_at=datetime.now(UTC)))
        s.flush()
        return kid

    def rotate_key(self, *, actor: str) -> str:
        """A new signing key replaces the current one; every token signed before is refused from
        now on. Returns the new kid."""
        new = ECKey.generate_key("P-384", private=True)
        kid = tokens.key_id(new)
        tmp = self._key_file.with_name(self._key_file.name + ".new")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(new.as_pem(private=True))
        now = datetime.now(UTC)
        try:
            with self._db.session() as s:
                lock_transaction(s, SIGNING_KEY_LOCK)  # two rotations at once: one current key after both
                retired = list(
                    s.scalars(select(BearerTokenKey.kid).where(BearerTokenKey.retired_at.is_(None)))
                )
                s.execute(
                    update(BearerTokenKey).where(BearerTokenKey.retired_at.is_(None)).values(retired_at=now)
                )
                # the retired keys' sealed copies go; the new one is sealed in by a replica running
                # on this data dir once it is unsealed (keybroker.replica)
                s.execute(delete(SharedSecret).where(SharedSecret.name.startswith(SHARED_KEY_PREFIX)))
                s.add(BearerTokenKey(kid=kid, public_jwk=new.as_dict(private=False), created_at=now))
                audit.append(
                    s,
                    actor=actor,
                    action="token.key.rotate",
                    object_id=kid,
                    outcome="success",
                    details={"retired": retired},
                )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        local = self.local_key()
        self._remember_retired(
            sorted({*retired, *([tokens.key_id(local)] if local is not None else [])} - {kid})
        )
        os.replace(tmp, self._key_file)
        with self._lock:
            self._keys_read_at = float("-inf")
            self._verdicts.clear()
        return kid

    def _signing_keys(self) -> dict[str, _Key]:
        now = self._clock()
        with self._lock:
            if now - self._keys_read_at < self._ttl:
                return self._keys
        with self._db.session() as s:
            rows = s.execute(
                select(BearerTokenKey.kid, BearerTokenKey.public_jwk, BearerTokenKey.retired_at)
            ).all()
        keys = {kid: _Key(ECKey.import_key(jwk), retired is not None) for kid, jwk, retired in rows}
        local = self.local_key()
        with self._lock:
            self._keys, self._keys_read_at = keys, now
            self._local_kid = tokens.key_id(local) if local is not None else None
        return keys

    # --- tokens ----------------------------------------------------------------------------

    def issue(
        self,
        subject: str,
        permissions: Sequence[str],
        *,
        ttl: timedelta = timedelta(hours=1),
        client_permissions: Sequence[str] = (),
        roles: Sequence[str] = (),
        actor: str = "operator",
        now: datetime | None = None,
    ) -> IssuedToken:
        """Sign a token with the current key and record it, with its audit record, in one transaction."""
        key = tokens.load_signing_key(self._key_file)
        issued = tokens.issue(
            key, subject, permissions, ttl=ttl, client_permissions=client_permissions, roles=roles, now=now
        )
        with self._db.session() as s:
            self._current_key(s, key)
            s.execute(delete(BearerToken).where(BearerToken.expires_at < datetime.now(UTC) - KEEP_EXPIRED))
            s.add(
                BearerToken(
                    jti=issued.jti,
                    kid=issued.key_id,
                    subject=issued.subject,
                    permissions=list(issued.permissions),
                    client_permissions=list(issued.client_permissions),
                    roles=list(issued.roles),
                    issued_at=issued.issued_at,
                    expires_at=issued.expires_at,
                    issued_by=actor,
                )
            )
            audit.append(
                s,
                actor=actor,
                action="token.create",
                object_id=issued.jti,
                outcome="success",
                details={
                    "subject": issued.subject,
                    "permissions": list(issued.permissions),
                    "client_permissions": list(issued.client_permissions),
                    "roles": list(issued.roles),
                    "expires_at": issued.expires_at.isoformat(),
                },
            )
        return issued

    def mint(
        self,
        subject: str,
        permissions: Sequence[str],
        *,
        ttl: timedelta = timedelta(hours=1),
        client_permissions: Sequence[str] = (),
        actor: str = "operator",
        now: datetime | None = None,
    ) -> str:
        """:meth:`issue`, returning just the token."""
        return self.issue(
            subject, permissions, ttl=ttl, client_permissions=client_permissions, actor=actor, now=now
        ).token

    def verify(self, token: str, *, now: datetime | None = None) -> Principal:
        """The token's principal if it is accepted (see the module's docstring); Unauthenticated
        otherwise."""
        keys = self._signing_keys()
        local_kid = self._local_kid
        principal = tokens.verify(token, {kid: k.public for kid, k in keys.items()}, now=now)
        assert principal.key_id is not None and principal.token_id is not None  # tokens.verify checks both
        if keys[principal.key_id].retired:
            raise Unauthenticated(
                "the bearer token's signing key was retired (keybroker token rotate-key): get a new token"
            )
        if principal.key_id != local_kid:
            raise Unauthenticated(
                "the bearer token's signing key is not the one this replica holds (a new replica gets "
                "the current key once unsealed, a rotated one within a minute): try again later"
            )
        refusal = self._refusal(principal.token_id, principal.key_id)
        if refusal is not None:
            raise Unauthenticated(refusal)
        return principal

    def _refusal(self, jti: str, kid: str) -> str | None:
        now = self._clock()
        with self._lock:
            cached = self._verdicts.get(jti)
            if cached is not None and now - cached.read_at < self._ttl:
                self._verdicts.move_to_end(jti)
                return cached.refusal
        with self._db.session() as s:
            row = s.execute(
                select(BearerToken.kid, BearerToken.revoked_at).where(BearerToken.jti == jti)
            ).first()
        if row is None or row.kid != kid:
            refusal: str | None = (
                "the bearer token is not on record here (tokens minted before this version, or from a "
                "copy of the signing key, are refused): get a new one"
            )
        elif row.revoked_at is not None:
            refusal = "the bearer token has been revoked"
        else:
            refusal = None
        with self._lock:
            self._verdicts[jti] = _Verdict(refusal, now)
            self._verdicts.move_to_end(jti)
            while len(self._verdicts) > self._max_entries:
                self._verdicts.popitem(last=False)
        return refusal

    def records(
        self, *, include_inactive: bool = False, actor: str | None = None, now: datetime | None = None
    ) -> list[TokenRecord]:
        """Recorded tokens, oldest first: the active ones, or all that are still on record. With
        ``actor``, the listing is audited (``token.search``)."""
        at = now or datetime.now(UTC)
        with self._db.session() as s:
            rows = s.execute(_WITH_KEY.order_by(BearerToken.issued_at, BearerToken.jti)).all()
            out = [
                r
                for r in (_record(row, retired) for row, retired in rows)
                if include_inactive or r.status(at) == "active"
            ]
            if actor is not None:
                audit.append(
                    s, actor=actor, action="token.search", outcome="success", details={"count": len(out)}
                )
        return out

    def get(self, jti: str) -> TokenRecord:
        jti = _check_jti(jti)
        with self._db.session() as s:
            found = s.execute(_WITH_KEY.where(BearerToken.jti == jti)).first()
        if found is None:
            raise NotFound(f"no token {jti} on record")
        return _record(found[0], found[1])

    def revoke(self, jti: str, *, actor: str, reason: str | None = None) -> TokenRecord:
        """Revoke the token ``jti`` (again: a no-op that keeps the first revocation)."""
        jti = _check_jti(jti)
        if reason is not None and not 1 <= len(reason) <= 256:
            raise InvalidInput("reason must be 1 to 256 characters", field="reason")
        with self._db.session() as s:
            row = s.get(BearerToken, jti, with_for_update=True)
            if row is None:
                raise NotFound(f"no token {jti} on record")
            first = row.revoked_at is None
            if first:
                row.revoked_at, row.revoked_by, row.revoke_reason = datetime.now(UTC), actor, reason
            audit.append(
                s,
                actor=actor,
                action="token.revoke",
                object_id=jti,
                outcome="success",
                details={"subject": row.subject, "reason": reason, "already_revoked": not first},
            )
        with self._lock:
            self._verdicts.pop(jti, None)
        return self.get(jti)


_WITH_KEY = select(BearerToken, BearerTokenKey.retired_at.is_not(None)).join(
    BearerTokenKey, BearerTokenKey.kid == BearerToken.kid
)


def _check_jti(jti: str) -> str:
    try:
        return str(uuid.UUID(jti))
    except ValueError:
        raise NotFound(f"no token {jti!r} on record (token ids are UUIDs)") from None


def _record(row: BearerToken, key_retired: bool) -> TokenRecord:
    return TokenRecord(
        jti=row.jti,
        key_id=row.kid,
        subject=row.subject,
        permissions=tuple(row.permissions),
        client_permissions=tuple(row.client_permissions),
        issued_at=_utc(row.issued_at),
        expires_at=_utc(row.expires_at),
        issued_by=row.issued_by,
        revoked_at=_utc(row.revoked_at) if row.revoked_at else None,
        revoked_by=row.revoked_by,
        revoke_reason=row.revoke_reason,
        key_retired=bool(key_retired),
        roles=tuple(row.roles or ()),
    )
