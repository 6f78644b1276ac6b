"""Secrets every replica shares, kept in the database under the seal (table ``shared_secrets``).

Each row is a name, a public half in clear (a certificate, a public key: what a sealed replica may
read and show) and the private half sealed with AES-256-GCM under a key derived from the root key
(HKDF, :data:`KEY_LABEL`), with the name and the public half as associated data: a row moved to
another name, or given another public half, does not open. So the database alone (a backup, its
administrator) gives none of them, and every replica that shares the root key reads them all.

Rows are only added, or replaced by name with a compare-and-set on the public half, so that
replicas racing to store one agree on whichever committed first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from keybroker import aead
from keybroker.errors import KeybrokerError
from keybroker.seal.barrier import Barrier
from keybroker.store.db import Database
from keybroker.store.models import SharedSecret

#: HKDF info of the key that seals the shared secrets.
KEY_LABEL = b"keybroker/shared-secrets/v1"
_AAD = b"keybroker/shared-secret/v1\n"


class SharedSecretBroken(KeybrokerError):
    """A row does not open under this root key (changed in the database, or another key store's)."""

    title = "Shared secret does not open"
    status = 503


@dataclass(frozen=True)
class Shared:
    name: str
    public: str
    private: bytes


def _aad(name: str, public: str) -> bytes:
    return _AAD + name.encode() + b"\n" + public.encode()


class SharedSecrets:
    def __init__(self, db: Database, barrier: Barrier) -> None:
        self._db = db
        self._barrier = barrier

    def public(self, name: str) -> str | None:
        """The public half of ``name`` (readable while sealed), or None."""
        with self._db.session() as s:
            return s.scalars(select(SharedSecret.public).where(SharedSecret.name == name)).first()

    def names(self, prefix: str) -> list[str]:
        with self._db.session() as s:
            return list(s.scalars(select(SharedSecret.name).where(SharedSecret.name.startswith(prefix))))

    def get(self, name: str) -> Shared | None:
        """``name`` opened (``Sealed`` while sealed), or None if there is no such row."""
        key = self._barrier.derive_key(KEY_LABEL)
        with self._db.session() as s:
            row = s.get(SharedSecret, name)
            if row is None:
                return None
            public, sealed = row.public, row.sealed
        try:
            private = aead.unseal(key, sealed, _aad(name, public))
        except aead.UnsealError:
            raise SharedSecretBroken(
                f"the shared secret {name!r} in the database does not open under this key store's root "
                "key: it was changed, or copied from another key store"
            ) from None
        return Shared(name, public, private)

    def put(self, name: str, public: str, private: bytes, *, replacing: str | None = None) -> bool:
        """Store ``name`` (``Sealed`` while sealed). Without ``replacing``: only if there is no such row
        yet. With it: only if the row's public half is still ``replacing``. False when another
        replica got there first (read it again)."""
        sealed = aead.seal(self._barrier.derive_key(KEY_LABEL), private, _aad(name, public))
        now = datetime.now(UTC)
        try:
            with self._db.session() as s:
                if replacing is None:
                    if s.get(SharedSecret, name) is not None:
                        return False
                    s.add(SharedSecret(name=name, public=public, sealed=sealed, created_at=now))
                    s.flush()
                    return True
                result = s.connection().execute(
                    update(SharedSecret)
                    .where(SharedSecret.name == name, SharedSecret.public == replacing)
                    .values(public=public, sealed=sealed, created_at=now)
                )
                return bool(result.rowcount == 1)
        except IntegrityError:
            return False
