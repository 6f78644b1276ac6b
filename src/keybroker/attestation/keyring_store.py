"""The attestation-token keyring, persisted in the database so that every replica signs with the
same key and verifies every other replica's tokens. The current private key is sealed under the
root key (AES-256-GCM, AAD = kid) together with the public keys that still verify (the keyring's
``previous``): those are read from the sealed blob only, never from the retired rows, which whoever
can write the database could add to (a public key of theirs would verify their forged EARs)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

from joserfc.jwk import ECKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from keybroker import aead
from keybroker.attestation.ear import Alg, Keyring
from keybroker.seal.barrier import Barrier
from keybroker.store.db import Database
from keybroker.store.models import SealConfig, SigningKey

KEEP_RETIRED = 4
_REFRESH_SECONDS = 30.0


def _aad(kid: str) -> bytes:
    return b"keybroker/ear-signing-key/v1/" + kid.encode()


class KeyringStore:
    def __init__(self, db: Database, barrier: Barrier, alg: Alg = "ES384") -> None:
        self._db = db
        self._barrier = barrier
        self._alg: Alg = alg
        self._lock = threading.Lock()
        self._cached: Keyring | None = None
        self._loaded_at = 0.0

    def keyring(self, *, refresh: bool = False) -> Keyring:
        """The current keyring (created on first use; reloaded every 30 s for other replicas' rotations)."""
        with self._lock:
            stale = time.monotonic() - self._loaded_at > _REFRESH_SECONDS
            if self._cached is None or refresh or stale:
                self._cached = self._load_or_create()
                self._loaded_at = time.monotonic()
            return self._cached

    def rotate(self) -> Keyring:
        with self._lock, self._db.session() as s:
            s.scalars(
                select(SealConfig).where(SealConfig.id == 1).with_for_update()
            ).first()  # serialize replicas
            current = self._load(s)
            ring = current.rotate(keep=KEEP_RETIRED) if current is not None else Keyring.generate(self._alg)
            now = datetime.now(UTC)
            for row in s.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))):
                row.retired_at = now
                row.sealed_private = (
                    b""  # the retired private key is destroyed; its public key still verifies
                )
            self._insert(s, ring, now)
            self._cached, self._loaded_at = ring, time.monotonic()
            return ring

    def _insert(self, s: Session, ring: Keyring, now: datetime) -> None:
        private = json.dumps(ring.to_dict()).encode()
        s.add(
            SigningKey(
                kid=ring.kid,
                alg=ring.alg,
                public_jwk=dict(ring.current.as_dict(private=False)),
                sealed_private=aead.seal(self._barrier.root_key(), private, _aad(ring.kid)),
                created_at=now,
                retired_at=None,
            )
        )

    def _load(self, s: Session) -> Keyring | None:
        current = s.scalars(
            select(SigningKey).where(SigningKey.retired_at.is_(None)).order_by(SigningKey.created_at.desc())
        ).first()
        if current is None:
            return None
        opened = json.loads(aead.unseal(self._barrier.root_key(), current.sealed_private, _aad(current.kid)))
        if "current" in opened:
            return Keyring.from_dict(opened)
        # sealed before the previous keys were sealed with it: the retired rows are not authentic,
        # so no previous key verifies (an EAR of a key retired before the upgrade is refused)
        return Keyring(ECKey.import_key(opened))

    def _load_or_create(self) -> Keyring:
        with self._db.session() as s:
            ring = self._load(s)
            if ring is not None:
                return ring
            s.scalars(select(SealConfig).where(SealConfig.id == 1).with_for_update()).first()
            ring = self._load(s)  # another replica may have won the race
            if ring is not None:
                return ring
            ring = Keyring.generate(self._alg)
            self._insert(s, ring, datetime.now(UTC))
            return ring
