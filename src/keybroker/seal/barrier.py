"""The barrier: holds the root key in memory while unsealed.

Layout: a random 256-bit *root key* protects every per-key data key. The root key is stored
encrypted under an *unseal key* (AES-256-GCM). The unseal key is never stored: it is split into
Shamir shares at init (seal type ``shamir``), or kept in a file in the data dir (``devfile``, for
``--dev`` only). Auto-unseal through an HSM or Transit will wrap the unseal key instead.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from keybroker.errors import Conflict, InvalidInput, Sealed
from keybroker.seal import aead, shamir
from keybroker.store.db import Database
from keybroker.store.models import SealConfig

_ROOT_AAD = b"keybroker/root-key/v1"
KEY_SIZE = 32


@dataclass(frozen=True)
class SealStatus:
    initialized: bool
    sealed: bool
    seal_type: str | None
    shares: int
    threshold: int
    progress: int


@dataclass(frozen=True)
class InitResult:
    #: Base64 unseal shares; empty for the dev file seal.
    shares: list[str]
    threshold: int


class Barrier:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._root_key: bytes | None = None
        self._pending: list[bytes] = []

    # --- state ---------------------------------------------------------------------------

    def _config(self) -> SealConfig | None:
        with self._db.session() as s:
            return s.scalars(select(SealConfig).where(SealConfig.id == 1)).first()

    def status(self) -> SealStatus:
        cfg = self._config()
        if cfg is None:
            return SealStatus(False, True, None, 0, 0, 0)
        with self._lock:
            return SealStatus(
                True, self._root_key is None, cfg.seal_type, cfg.shares, cfg.threshold, len(self._pending)
            )

    @property
    def sealed(self) -> bool:
        return self._root_key is None

    def root_key(self) -> bytes:
        key = self._root_key
        if key is None:
            raise Sealed("the key store is sealed: unseal it with 'keybroker operator unseal'")
        return key

    # --- init / unseal / seal ------------------------------------------------------------

    def _store(self, seal_type: str, shares: int, threshold: int, unseal_key: bytes) -> None:
        root = os.urandom(KEY_SIZE)
        cfg = SealConfig(
            id=1,
            seal_type=seal_type,
            shares=shares,
            threshold=threshold,
            encrypted_root_key=aead.seal(unseal_key, root, _ROOT_AAD),
            created_at=datetime.now(UTC),
        )
        with self._db.session() as s:
            if s.get(SealConfig, 1) is not None:
                raise Conflict("the key store is already initialized")
            s.add(cfg)

    def init_shamir(self, shares: int = 5, threshold: int = 3) -> InitResult:
        if self._config() is not None:
            raise Conflict("the key store is already initialized")
        unseal_key = os.urandom(KEY_SIZE)
        parts = shamir.split(unseal_key, shares, threshold)
        self._store("shamir", shares, threshold, unseal_key)
        return InitResult([base64.b64encode(p).decode() for p in parts], threshold)

    def init_devfile(self, key_file: Path) -> None:
        """Dev mode: the unseal key lives in ``key_file`` (0600)."""
        if self._config() is not None:
            raise Conflict("the key store is already initialized")
        unseal_key = os.urandom(KEY_SIZE)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(unseal_key)
        self._store("devfile", 1, 1, unseal_key)

    def unseal_devfile(self, key_file: Path) -> None:
        cfg = self._config()
        if cfg is None or cfg.seal_type != "devfile":
            raise Conflict("the key store does not use the dev key-file seal")
        self._open(cfg, key_file.read_bytes())

    def _open(self, cfg: SealConfig, unseal_key: bytes) -> None:
        try:
            root = aead.unseal(unseal_key, cfg.encrypted_root_key, _ROOT_AAD)
        except aead.UnsealError:
            raise InvalidInput(
                "the unseal key is wrong: these shares do not reconstruct it", field="key"
            ) from None
        self._root_key = root

    def submit_share(self, share_b64: str) -> SealStatus:
        """Add one unseal share; unseals when the threshold is reached."""
        cfg = self._config()
        if cfg is None:
            raise Conflict("the key store is not initialized: run 'keybroker operator init'")
        if cfg.seal_type != "shamir":
            raise Conflict(f"the key store uses the {cfg.seal_type} seal, not unseal shares")
        try:
            share = base64.b64decode(share_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("the unseal share is not valid base64", field="key") from None
        if len(share) != KEY_SIZE + 1:
            raise InvalidInput(
                f"the unseal share is {len(share)} bytes, expected {KEY_SIZE + 1}", field="key"
            )
        with self._lock:
            if self._root_key is None:
                if any(p[-1] == share[-1] for p in self._pending):
                    raise InvalidInput("this share was already given", field="key")
                self._pending.append(share)
                if len(self._pending) >= cfg.threshold:
                    parts, self._pending = self._pending, []
                    self._open(cfg, shamir.combine(parts))
        return self.status()

    def seal(self) -> None:
        with self._lock:
            self._root_key = None
            self._pending = []
