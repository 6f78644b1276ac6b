"""The barrier: holds the root key in memory while unsealed.

Layout: a random 256-bit *root key* protects every per-key data key. The root key is stored
encrypted under an *unseal key* (AES-256-GCM). The unseal key is never stored: it is split into
Shamir shares at init (seal type ``shamir``), or kept in a file in the data dir (``devfile``, for
``--dev`` only), or wrapped by an auto-unseal seal (``pkcs11``, ``transit``; see
:mod:`keybroker.seal.autounseal`). With an auto seal, ``encrypted_root_key`` holds a small
container: ``b"KBAS" || 0x01 || u16be len(wrapped) || wrapped unseal key || AES-GCM(unseal key,
root key)``, and init returns *recovery* shares (Shamir shares of the same unseal key) that open
the barrier by hand when the seal backend is lost.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keybroker import aead
from keybroker.errors import Conflict, InvalidInput, Sealed
from keybroker.seal import shamir
from keybroker.store.db import Database
from keybroker.store.models import SealConfig

log = logging.getLogger("keybroker.seal")

_ROOT_AAD = b"keybroker/root-key/v1"
KEY_SIZE = 32
_AUTO_MAGIC = b"KBAS\x01"


class AutoSeal(Protocol):
    """An auto-unseal seal (implementations in :mod:`keybroker.seal.autounseal`)."""

    #: Stored in ``seal_config.seal_type``.
    seal_type: str

    def wrap(self, unseal_key: bytes, *, create_key: bool) -> bytes:
        """Encrypt the unseal key with the seal's key (created first when ``create_key``)."""
        ...

    def unwrap(self, blob: bytes) -> bytes: ...

    def describe(self) -> str: ...


def _pack_auto(wrapped_unseal_key: bytes, encrypted_root: bytes) -> bytes:
    return _AUTO_MAGIC + len(wrapped_unseal_key).to_bytes(2, "big") + wrapped_unseal_key + encrypted_root


def _unpack_auto(blob: bytes) -> tuple[bytes, bytes]:
    if not blob.startswith(_AUTO_MAGIC) or len(blob) < len(_AUTO_MAGIC) + 2:
        raise Conflict("the stored seal configuration is not an auto-unseal container")
    n = int.from_bytes(blob[len(_AUTO_MAGIC) : len(_AUTO_MAGIC) + 2], "big")
    start = len(_AUTO_MAGIC) + 2
    if len(blob) < start + n:
        raise Conflict("the stored auto-unseal container is truncated")
    return blob[start : start + n], blob[start + n :]


@dataclass(frozen=True)
class SealStatus:
    initialized: bool
    sealed: bool
    seal_type: str | None
    shares: int
    threshold: int
    #: Shares given so far in the current unseal attempt (this process's; each replica has its own).
    progress: int
    #: The current unseal attempt's id (Vault's ``nonce``): changes when an attempt starts again.
    #: "" when no share is pending.
    nonce: str = ""


class ShareRejected(InvalidInput):
    """An unseal share refused. ``check``: ``malformed`` or ``duplicate`` (told at once), or
    ``wrong_key`` (told at the threshold, when the combined key does not open the root key; the
    attempt's ``discarded`` shares are dropped then). Never carries the share."""

    def __init__(self, detail: str, *, check: str, attempt: str, discarded: int = 0) -> None:
        super().__init__(detail, field="key", check=check)
        self.check = check
        self.attempt = attempt
        self.discarded = discarded


@dataclass(frozen=True)
class ResetResult:
    status: SealStatus
    #: The attempt reset ("" if none was under way) and how many shares it had.
    attempt: str
    discarded: int


@dataclass(frozen=True)
class InitResult:
    #: Base64 unseal shares (recovery shares with auto-unseal); empty for the dev file seal.
    shares: list[str]
    threshold: int
    #: True: ``shares`` are recovery shares (an auto seal unseals; they are for disaster recovery).
    recovery: bool = False


class Barrier:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._root_key: bytes | None = None
        # The unseal attempt under way: its shares (in memory only) and its id.
        self._pending: list[bytes] = []
        self._attempt = ""
        self._auto: AutoSeal | None = None
        self._on_unseal: list[Callable[[], None]] = []
        self._on_seal: list[Callable[[], None]] = []

    def on_unseal(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` each time the barrier opens (shares, auto seal, dev file), after it has
        opened, in the thread that opened it. Its failures are logged, never raised: the barrier is
        open either way, and the callback's owner retries (see ``keybroker.replica``)."""
        self._on_unseal.append(callback)

    def on_seal(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` each time the barrier is sealed, after the root key was dropped: drop
        whatever was opened with it."""
        self._on_seal.append(callback)

    def _opened(self) -> None:
        for callback in self._on_unseal:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - see on_unseal
                log.error("after unseal: %s failed: %s: %s", callback, type(exc).__name__, exc)

    def attach_auto_seal(self, seal: AutoSeal) -> None:
        """Use ``seal`` for init and start-up (see :func:`keybroker.seal.autounseal.configure_auto_unseal`)."""
        self._auto = seal

    @property
    def auto_seal(self) -> AutoSeal | None:
        return self._auto

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
                True,
                self._root_key is None,
                cfg.seal_type,
                cfg.shares,
                cfg.threshold,
                len(self._pending),
                self._attempt,
            )

    @property
    def sealed(self) -> bool:
        return self._root_key is None

    def root_key(self) -> bytes:
        key = self._root_key
        if key is None:
            raise Sealed("the key store is sealed: unseal it with 'keybroker operator unseal'")
        return key

    def derive_key(self, label: bytes, length: int = KEY_SIZE) -> bytes:
        """A key derived from the root key (HKDF-SHA256, ``label`` as info): the same on every replica
        that shares the root key, unavailable while sealed. Callers must drop it when ``sealed``."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(self.root_key())

    # --- init / unseal / seal ------------------------------------------------------------

    def _store(
        self,
        seal_type: str,
        shares: int,
        threshold: int,
        unseal_key: bytes,
        wrapped_unseal_key: bytes | None = None,
        also: Callable[[Session], None] | None = None,
    ) -> None:
        root = os.urandom(KEY_SIZE)
        encrypted = aead.seal(unseal_key, root, _ROOT_AAD)
        if wrapped_unseal_key is not None:
            encrypted = _pack_auto(wrapped_unseal_key, encrypted)
        cfg = SealConfig(
            id=1,
            seal_type=seal_type,
            shares=shares,
            threshold=threshold,
            encrypted_root_key=encrypted,
            created_at=datetime.now(UTC),
        )
        try:
            with self._db.session() as s:
                if s.get(SealConfig, 1) is not None:
                    raise Conflict("the key store is already initialized")
                s.add(cfg)
                s.flush()
                if also is not None:
                    also(s)
        except IntegrityError:  # another process initialized it at the same moment
            raise Conflict("the key store is already initialized") from None

    def init_shamir(
        self, shares: int = 5, threshold: int = 3, *, also: Callable[[Session], None] | None = None
    ) -> InitResult:
        """Initialize: unseal shares, or recovery shares when an auto seal is attached. ``also`` runs
        in the transaction that stores the seal configuration (the audit record of the init: if it
        cannot be written, nothing is initialized and no share is handed out to be lost)."""
        if self._auto is not None:
            return self.init_auto(shares, threshold, also=also)
        if self._config() is not None:
            raise Conflict("the key store is already initialized")
        unseal_key = os.urandom(KEY_SIZE)
        parts = shamir.split(unseal_key, shares, threshold)
        self._store("shamir", shares, threshold, unseal_key, also=also)
        return InitResult([base64.b64encode(p).decode() for p in parts], threshold)

    def init_auto(
        self, shares: int = 5, threshold: int = 3, *, also: Callable[[Session], None] | None = None
    ) -> InitResult:
        """Initialize with the attached auto seal; the barrier is unsealed afterwards."""
        seal = self._auto
        if seal is None:
            raise Conflict("no auto-unseal seal is configured")
        if self._config() is not None:
            raise Conflict("the key store is already initialized")
        unseal_key = os.urandom(KEY_SIZE)
        parts = shamir.split(unseal_key, shares, threshold)
        wrapped = seal.wrap(unseal_key, create_key=True)
        self._store(seal.seal_type, shares, threshold, unseal_key, wrapped, also=also)
        cfg = self._config()
        assert cfg is not None
        with self._lock:
            self._open(cfg, unseal_key)
        self._opened()
        return InitResult([base64.b64encode(p).decode() for p in parts], threshold, recovery=True)

    def auto_unseal(self) -> bool:
        """Unseal through the attached seal. False when there is nothing to do (no seal attached,
        not initialized, or already unsealed); raises when the seal backend fails."""
        seal = self._auto
        cfg = self._config()
        if seal is None or cfg is None or not self.sealed:
            return False
        if cfg.seal_type != seal.seal_type:
            raise Conflict(
                f"the key store was initialized with the {cfg.seal_type} seal but {seal.seal_type} is configured"
            )
        wrapped, _ = _unpack_auto(cfg.encrypted_root_key)
        unseal_key = seal.unwrap(wrapped)
        with self._lock:
            opened = self._root_key is None
            if opened:
                self._open(cfg, unseal_key)
                self._forget_attempt()
        if opened:
            self._opened()
        return True

    def init_devfile(self, key_file: Path) -> None:
        """Dev mode: the unseal key lives in ``key_file`` (0600)."""
        if self._config() is not None:
            raise Conflict("the key store is already initialized")
        unseal_key = os.urandom(KEY_SIZE)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process on this data dir is initializing
            raise Conflict(f"{key_file} exists: another process is initializing the key store") from None
        with os.fdopen(fd, "wb") as f:
            f.write(unseal_key)
        try:
            self._store("devfile", 1, 1, unseal_key)
        except BaseException:
            key_file.unlink(missing_ok=True)  # it opens nothing: another process initialized first
            raise

    def unseal_devfile(self, key_file: Path) -> None:
        cfg = self._config()
        if cfg is None or cfg.seal_type != "devfile":
            raise Conflict("the key store does not use the dev key-file seal")
        self._open(cfg, key_file.read_bytes())
        self._opened()

    def _open(self, cfg: SealConfig, unseal_key: bytes) -> None:
        blob = cfg.encrypted_root_key
        if blob.startswith(_AUTO_MAGIC):
            _, blob = _unpack_auto(blob)
        try:
            root = aead.unseal(unseal_key, blob, _ROOT_AAD)
        except aead.UnsealError:
            raise InvalidInput(
                "the unseal key is wrong: these shares do not reconstruct it", field="key"
            ) from None
        self._root_key = root

    def _forget_attempt(self) -> None:
        self._pending = []
        self._attempt = ""

    def _parse_share(self, share_b64: str) -> bytes:
        """The share's bytes, or ShareRejected(malformed) naming what is wrong (never the share)."""
        with self._lock:
            attempt = self._attempt
        try:
            share = base64.b64decode(share_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ShareRejected(
                "the unseal share is not valid base64", check="malformed", attempt=attempt
            ) from None
        if len(share) != KEY_SIZE + 1:
            raise ShareRejected(
                f"the unseal share is {len(share)} bytes, expected {KEY_SIZE + 1}",
                check="malformed",
                attempt=attempt,
            )
        if share[-1] == 0:
            raise ShareRejected(
                "the unseal share carries index 0, which no share has", check="malformed", attempt=attempt
            )
        return share

    def submit_share(self, share_b64: str) -> SealStatus:
        """Add one unseal share to the attempt under way; unseal when the threshold is reached.

        Raises :class:`ShareRejected`: at once for a malformed share or one whose index was already
        given in this attempt; at the threshold when the shares do not reconstruct the unseal key
        (one at least is wrong): the attempt's shares are then discarded, as Vault does.
        """
        cfg = self._config()
        if cfg is None:
            raise Conflict("the key store is not initialized: run 'keybroker operator init'")
        if cfg.seal_type not in ("shamir", "pkcs11", "transit"):  # auto seals: recovery shares
            raise Conflict(f"the key store uses the {cfg.seal_type} seal, not unseal shares")
        share = self._parse_share(share_b64)
        opened = False
        with self._lock:
            if self._root_key is None:
                for given in self._pending:
                    if given[-1] != share[-1]:
                        continue
                    if hmac.compare_digest(given, share):
                        raise ShareRejected(
                            "this share was already given in this unseal attempt",
                            check="duplicate",
                            attempt=self._attempt,
                        )
                    raise ShareRejected(
                        "a different share with the same index was already given in this unseal "
                        "attempt: one of the two is not genuine. If the earlier one was not yours, "
                        "reset the attempt ('keybroker operator unseal --reset') and start again",
                        check="duplicate",
                        attempt=self._attempt,
                    )
                if not self._pending:
                    self._attempt = str(uuid.uuid4())
                self._pending.append(share)
                if len(self._pending) >= cfg.threshold:
                    parts, attempt = self._pending, self._attempt
                    self._forget_attempt()
                    try:
                        self._open(cfg, shamir.combine(parts))
                    except InvalidInput:
                        raise ShareRejected(
                            f"the unseal key is wrong: these {len(parts)} shares do not reconstruct it "
                            "(one at least is not genuine, or is of another key store). The attempt's "
                            "shares were discarded: start again with the genuine shares",
                            check="wrong_key",
                            attempt=attempt,
                            discarded=len(parts),
                        ) from None
                    opened = True
        if opened:
            self._opened()
        return self.status()

    def reset(self) -> ResetResult:
        """Discard the shares of the attempt under way (Vault's ``reset``)."""
        with self._lock:
            attempt, discarded = self._attempt, len(self._pending)
            self._forget_attempt()
        return ResetResult(self.status(), attempt, discarded)

    def seal(self) -> None:
        with self._lock:
            self._root_key = None
            self._forget_attempt()
        for callback in self._on_seal:
            callback()
