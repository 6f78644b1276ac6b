"""In the service: authenticate the audit chain head before extending it, and checkpoint it.

A replica keeps the last head it has authenticated, its *anchor*: at start the newest checkpoint in
its data dir; then its own records once committed, and those of other replicas once their links,
hashes and signatures check out from the anchor. Before it appends, and every checkpoint interval,
it authenticates the head in the database against the anchor. When it cannot (the head went back,
or was rewritten, or the records after the anchor do not verify) it raises an alarm: an error
log line, the ``keybroker_audit_chain_alarm`` gauge, 503 for key operations and for ``append``,
instead of extending a forged history. The alarm reflects the last check: it clears when the
chain authenticates again (the database restored).

The :class:`Checkpointer` signs the authenticated head into the checkpoint file at least every
``interval`` while records are appended, at start and at shutdown.
"""

from __future__ import annotations

import base64
import logging
import threading
from datetime import UTC, datetime
from typing import NoReturn, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from keybroker.audit import log as audit
from keybroker.audit.checkpoint import Checkpoint, CheckpointFile, CheckpointSigner, raw_public
from keybroker.errors import AuditChainAlarm, Sealed
from keybroker.store.db import Database
from keybroker.store.models import AuditHead, AuditRecord

log = logging.getLogger("keybroker.audit")
checkpoint_log = logging.getLogger("keybroker.audit.checkpoint")

_READ_HEAD = select(AuditHead.seq, AuditHead.hash, AuditHead.signed_from).where(AuditHead.id == 1)


class KeySource(Protocol):
    """Where the record key comes from (the barrier)."""

    @property
    def sealed(self) -> bool: ...

    def derive_key(self, label: bytes, length: int = ...) -> bytes: ...


class ChainGuard:
    """The anchor, the record key while unsealed, and the alarm (see the module docstring)."""

    def __init__(self, keys: KeySource, start: Checkpoint | None = None) -> None:
        self._keys = keys
        self._lock = threading.Lock()
        self._anchor: tuple[int, str] | None = (start.seq, start.hash) if start is not None else None
        self._signed_from: int | None = start.signed_from if start is not None else None
        self._public: Ed25519PublicKey | None = None
        if start is not None and start.record_key is not None:
            self._public = Ed25519PublicKey.from_public_bytes(base64.b64decode(start.record_key))
        self._private: Ed25519PrivateKey | None = None
        self._alarm: str | None = None

    @property
    def alarm(self) -> str | None:
        """Why the head cannot be authenticated; None when it can."""
        return self._alarm

    @property
    def record_key_b64(self) -> str | None:
        """The record key's raw public key (base64), once known (unsealed once, or checkpointed)."""
        public = self._public
        return None if public is None else base64.b64encode(raw_public(public)).decode()

    @property
    def anchor(self) -> tuple[int, str] | None:
        return self._anchor

    # --- the record key ----------------------------------------------------------------------------

    def signing_key(self) -> Ed25519PrivateKey | None:
        """The record key while unsealed (derived once, dropped when sealed); None while sealed."""
        if self._keys.sealed:
            self._private = None
            return None
        key = self._private
        if key is not None:
            return key
        try:
            key = audit.record_key(self._keys.derive_key(audit.RECORD_KEY_LABEL))
        except Sealed:
            return None
        public = key.public_key()
        if self._public is not None and raw_public(self._public) != raw_public(public):
            self._fail(
                "the record signing key derived from this key store's root key is not the one the "
                "checkpoints in the data dir name (a data dir of another key store?)"
            )
        self._public, self._private = public, key
        return key

    # --- authentication ----------------------------------------------------------------------------

    def before_append(self, session: Session, head: audit.Head, *, own: bool) -> Ed25519PrivateKey | None:
        """Authenticate ``head`` in the appending transaction (it holds the head lock); ``own``:
        the transaction's own previous record, authenticated when it was appended."""
        key = self.signing_key()
        if own:
            return key
        anchor = self._anchor  # no commit can land between the head read and this: we hold the lock
        if anchor == (head.seq, head.hash) and self._signed_from == head.signed_from:
            if self._alarm is not None:
                self._clear(head.seq)
            return key
        self._authenticate(session, head, anchor)
        return key

    def committed(self, seq: int, hash_hex: str) -> None:
        with self._lock:
            if self._anchor is None or seq > self._anchor[0]:
                self._anchor = (seq, hash_hex)

    def authenticate(self, db: Database) -> audit.Head:
        """Authenticate the current head (the checkpointer's tick); raises ``AuditChainAlarm``."""
        self.signing_key()
        anchor = self._anchor  # before the head is read: our own commits only move it forward
        with db.session() as s:
            head = audit.Head(*s.execute(_READ_HEAD).one())
            self._authenticate(s, head, anchor)
        return head

    def _authenticate(self, session: Session, head: audit.Head, anchor: tuple[int, str] | None) -> None:
        signed_from = self._signed_from
        if signed_from is not None and head.signed_from != signed_from:
            self._fail(
                f"audit_head.signed_from changed from {signed_from} to {head.signed_from} "
                "(signed records passed off as older than signing?)"
            )
        if anchor is None:
            self._adopt(session, head)
            return
        records: list[AuditRecord] = []
        if head.seq > anchor[0]:
            records = list(
                session.scalars(
                    select(AuditRecord)
                    .where(AuditRecord.seq > anchor[0], AuditRecord.seq <= head.seq)
                    .order_by(AuditRecord.seq)
                )
            )
        problem = audit.follow(anchor[0], anchor[1], records, head, record_key=self._public)
        if problem is not None:
            self._fail(problem)
        with self._lock:
            if self._anchor is None or head.seq >= self._anchor[0]:
                self._anchor = (head.seq, head.hash)
            self._signed_from = head.signed_from
        if self._alarm is not None:
            self._clear(head.seq)

    def _adopt(self, session: Session, head: audit.Head) -> None:
        """No checkpoint yet (a new data dir): take the head as found, its record checked alone."""
        if head.seq > 0:
            rec = session.get(AuditRecord, head.seq)
            if rec is None or rec.hash != head.hash:
                self._fail(f"the chain head names record {head.seq}, which is missing or has another hash")
            walker = audit.ChainWalker(
                rec.seq - 1, rec.prev_hash, signed_from=head.signed_from, record_key=self._public
            )
            bad = walker.step(rec)
            if bad is not None:
                self._fail(f"record {rec.seq}: {bad[1]}")
            log.warning(
                "no audit checkpoint in the data dir yet: the audit chain is taken as found, up to "
                "record %d; check what came before with 'keybroker audit verify --no-checkpoints'",
                head.seq,
            )
        with self._lock:
            self._anchor = (head.seq, head.hash)
            self._signed_from = head.signed_from

    def _fail(self, reason: str) -> NoReturn:
        with self._lock:
            new = self._alarm != reason
            self._alarm = reason
        if new:
            log.error(
                "AUDIT CHAIN ALARM: %s. This replica does not extend the audit log and refuses key "
                "operations until the chain authenticates again; run 'keybroker audit verify'. If the "
                "database was replaced on purpose (a restored backup, a new key store), move the "
                "checkpoint file of the data dir aside, keeping it as the record of what was lost.",
                reason,
            )
        raise AuditChainAlarm(
            f"the audit chain cannot be authenticated: {reason}; key operations are refused until "
            "an operator checks it ('keybroker audit verify')"
        )

    def _clear(self, seq: int) -> None:
        with self._lock:
            was, self._alarm = self._alarm, None
        if was is not None:
            log.warning("the audit chain authenticates again, up to record %d: alarm cleared", seq)


class Checkpointer:
    """Signs the authenticated head into the checkpoint file (a thread, started with the app)."""

    def __init__(
        self,
        db: Database,
        guard: ChainGuard,
        signer: CheckpointSigner,
        sink: CheckpointFile,
        *,
        interval: float = 1.0,
        emit_log: bool = False,
        latest: Checkpoint | None = None,
    ) -> None:
        self.db = db
        self.guard = guard
        self.signer = signer
        self.sink = sink
        self.interval = interval
        self.emit_log = emit_log
        self._latest = latest
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._users = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def latest(self) -> Checkpoint | None:
        return self._latest

    def start(self) -> None:
        """Catch up and checkpoint now, then every ``interval`` (idempotent: counts its users)."""
        with self._lock:
            self._users += 1
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="audit-checkpointer", daemon=True)
        self._tick_logged()
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write a last checkpoint (at shutdown)."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._thread is None:
                return
            thread, self._thread = self._thread, None
        self._stop.set()
        thread.join()
        self._tick_logged()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick_logged()

    def _tick_logged(self) -> None:
        try:
            self.tick()
        except AuditChainAlarm:
            pass  # logged by the guard, visible in the gauge
        except Exception as exc:  # noqa: BLE001 - the thread must outlive a database or disk hiccup
            if self.db.availability.failed(exc) is None:  # a database outage is logged once
                log.error("audit checkpoint failed: %s: %s", type(exc).__name__, exc)

    def tick(self, now: datetime | None = None) -> Checkpoint | None:
        """Checkpoint the head if it moved (or the record key became known); raises on an alarm."""
        with self._tick_lock:
            head = self.guard.authenticate(self.db)
            record_key = self.guard.record_key_b64
            last = self._latest
            if last is not None and (last.seq, last.hash, last.signed_from, last.record_key) == (
                head.seq,
                head.hash,
                head.signed_from,
                record_key,
            ):
                return None
            cp = self.signer.sign(
                seq=head.seq,
                hash=head.hash,
                time=now or datetime.now(UTC),
                signed_from=head.signed_from,
                record_key=record_key,
            )
            self.sink.append(cp)
            self._latest = cp
        if self.emit_log:
            checkpoint_log.info("audit checkpoint %s", cp.to_json())
        return cp
