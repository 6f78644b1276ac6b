"""The audit log: a hash chain of records from a fixed vocabulary, signed under the seal.

Each record's ``hash`` is SHA-256 over the previous record's hash and the JCS-canonical JSON (RFC
8785) of its fields, so an edit, a deletion or a reordering breaks the chain. That hash is unkeyed:
whoever can write the database can recompute it. So the chain is anchored outside the database:

- a record written while the key store is unsealed carries ``sig``, an Ed25519 signature of its
  hash by the *record key*, derived from the barrier's root key (HKDF, :data:`RECORD_KEY_LABEL`) and
  so the same on every replica, and not readable from the database. A record written while sealed
  cannot be signed: it is accepted unsigned only for :data:`SEALED_ACTIONS`, and by ``verify`` only
  once a checkpoint covers it;
- before it appends, a running replica authenticates the head it extends
  (:mod:`keybroker.audit.guard`), and it signs checkpoints of the head into a file outside the
  database (:mod:`keybroker.audit.checkpoint`), which ``verify_chain`` checks the chain against.

The chain head lives in ``audit_head`` and is locked (``SELECT ... FOR UPDATE`` on PostgreSQL;
SQLite serializes writers) while a record is appended, so replicas sharing one database append one
chain. Every field is bounded (longer text is cut, and says so) and the action is one of
:data:`ACTIONS`: the log is not a log of request text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, bindparam, event, insert, select, update
from sqlalchemy.orm import Session

from keybroker import jcs, stages
from keybroker.audit.checkpoint import Checkpoint, format_time
from keybroker.errors import Sealed
from keybroker.store.models import AuditHead, AuditRecord

GENESIS = "0" * 64

#: Every action the code writes; ``append`` refuses any other (a programming error). Dotted,
#: lowercase, ``object.verb``. Add new ones here (and, if they can happen while sealed, to
#: :data:`SEALED_ACTIONS`).
ACTIONS: frozenset[str] = frozenset(
    {
        # operator (/sys/v1)
        "sys.init",
        "sys.unseal",
        "sys.seal",
        "sys.unseal.reset",
        "integrity.adopt",
        # bearer tokens (/kbs/v1/tokens, keybroker token ...)
        "token.create",
        "token.search",
        "token.revoke",
        "token.key.rotate",
        # roles (/kbs/v1/roles, keybroker role ...)
        "role.create",
        "role.retrieve",
        "role.search",
        "role.update",
        "role.delete",
        # the web console's sign-in and sign-out (/ui)
        "console.login",
        "console.logout",
        # keys (/kbs/v1/keys)
        "key.create",
        "key.import",
        "key.register",
        "key.retrieve",
        "key.search",
        "key.delete",
        "key.certify",
        "key.certificate.retrieve",
        "key.transfer",
        # key-transfer policies (/kbs/v1/key-transfer-policies)
        "policy.create",
        "policy.retrieve",
        "policy.search",
        "policy.update",
        "policy.delete",
        # /kbs/v0 resources
        "resource.release",
        "resource.write",
        "resource.policy",
        # attestation (/attestation/v1, /kbs/v0 attest)
        "attestation.attest",
        # the collateral cache refreshed from its configured source (the console's Refresh now)
        "collateral.refresh",
        # the audit log itself (failed reads of /kbs/v1/audit)
        "audit.read",
        # TPM attestation keys (/kbs/v1/tpm, keybroker tpm ak ...)
        "tpm.ak.enrol",
        "tpm.ak.activate",
        "tpm.ak.search",
        "tpm.ak.retrieve",
        "tpm.ak.approve",
        "tpm.ak.revoke",
    }
)
OUTCOMES: frozenset[str] = frozenset({"success", "denied", "failed"})
_FAILURES = frozenset({"denied", "failed"})

#: The actions that can happen while the key store is sealed, with the outcomes they can have then.
#: Their records may carry no signature (there is no key to sign with while sealed); nothing else may.
SEALED_ACTIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "sys.init": OUTCOMES,  # Shamir init leaves the store sealed
        "sys.seal": OUTCOMES,  # sealing an already sealed store
        "sys.unseal": _FAILURES,  # the threshold not reached, or a wrong share
        "audit.read": _FAILURES,  # the log is readable while sealed; refusals are audited
        "attestation.attest": _FAILURES,  # evidence is verified, and refused, without the seal
        "sys.unseal.reset": OUTCOMES,  # discarding the shares given so far
        # Bearer tokens are kept apart from the seal (as in Vault): listed and revoked while sealed,
        # and created, revoked and rotated by `keybroker token` on the operator's host, which has
        # no record key at all.
        "token.create": OUTCOMES,
        "token.search": OUTCOMES,
        "token.revoke": OUTCOMES,
        "token.key.rotate": OUTCOMES,
        # Roles, like tokens, are changed by `keybroker role` on the operator's host too.
        "role.create": OUTCOMES,
        "role.retrieve": OUTCOMES,
        "role.search": OUTCOMES,
        "role.update": OUTCOMES,
        "role.delete": OUTCOMES,
        # Enrolled TPM AKs, like roles, are listed, approved and revoked by `keybroker tpm ak` on the
        # operator's host too (enrolment itself only through the API, signed).
        "tpm.ak.search": OUTCOMES,
        "tpm.ak.retrieve": OUTCOMES,
        "tpm.ak.approve": OUTCOMES,
        "tpm.ak.revoke": OUTCOMES,
        # Operators sign in to the console to unseal it.
        "console.login": OUTCOMES,
        "console.logout": OUTCOMES,
    }
)

#: Field bounds (characters; details: bytes of compact JSON). Longer values are cut and say so.
MAX_ACTOR = 256
MAX_OBJECT_ID = 256
MAX_REASON = 4096
MAX_DETAILS = 16 * 1024

#: HKDF label of the record signing key (``Barrier.derive_key``).
RECORD_KEY_LABEL = b"keybroker/audit-record-signing/v1"
_SIG_DOMAIN = b"keybroker/audit-record/v1\n"


def unsigned_allowed(action: str, outcome: str) -> bool:
    return outcome in SEALED_ACTIONS.get(action, frozenset())


def _clip(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    marker = f"...[truncated, {len(value)} chars]"
    return value[: limit - len(marker)] + marker


def _bound_details(details: dict[str, Any] | None) -> dict[str, Any] | None:
    if details is None:
        return None
    text = json.dumps(details, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(text) <= MAX_DETAILS:
        return details
    return {"_truncated": {"bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}}


# --- record hash and signature ----------------------------------------------------------------------


def record_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + jcs.dumps(fields)).hexdigest()


def _fields(rec: AuditRecord) -> dict[str, Any]:
    return {
        "seq": rec.seq,
        "time": format_time(rec.time),
        "actor": rec.actor,
        "action": rec.action,
        "object_id": rec.object_id,
        "outcome": rec.outcome,
        "reason": rec.reason,
        "details": rec.details,
    }


def record_key(seed: bytes) -> Ed25519PrivateKey:
    """The record signing key from its 32-byte seed (``Barrier.derive_key(RECORD_KEY_LABEL)``)."""
    return Ed25519PrivateKey.from_private_bytes(seed)


def sign_record(key: Ed25519PrivateKey, hash_hex: str) -> str:
    return base64.b64encode(key.sign(_SIG_DOMAIN + bytes.fromhex(hash_hex))).decode()


def signature_valid(public_key: Ed25519PublicKey, hash_hex: str, sig: str) -> bool:
    try:
        public_key.verify(base64.b64decode(sig, validate=True), _SIG_DOMAIN + bytes.fromhex(hash_hex))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


# --- append ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    signed_from: int


class Guard(Protocol):
    """What ``append`` asks before extending the chain (:class:`keybroker.audit.guard.ChainGuard`)."""

    def before_append(self, session: Session, head: Head, *, own: bool) -> Ed25519PrivateKey | None:
        """Authenticate ``head`` (raise if it cannot be; ``own``: this transaction appended it);
        the record key, or None while sealed."""
        ...

    def committed(self, seq: int, hash: str) -> None:
        """The record ``seq`` with ``hash`` was committed."""
        ...


#: The guard of each engine (one per ``Database``); engines without one append unsigned records
#: (tools and tests; the service always attaches one).
_GUARDS: weakref.WeakKeyDictionary[Engine, Guard] = weakref.WeakKeyDictionary()
_PENDING = "keybroker.audit.pending"


def attach_guard(engine: Engine, guard: Guard) -> None:
    _GUARDS[engine] = guard


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for guard, seq, hash_hex in session.info.pop(_PENDING, ()):
        guard.committed(seq, hash_hex)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


#: The chain head, locked until the transaction ends (the appends of all replicas queue here).
_HEAD = (
    select(AuditHead.seq, AuditHead.hash, AuditHead.signed_from).where(AuditHead.id == 1).with_for_update()
)
_INSERT = insert(AuditRecord)
_ADVANCE = (
    update(AuditHead).where(AuditHead.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


@stages.timed("audit")
def append(
    session: Session,
    *,
    actor: str,
    action: str,
    outcome: str,
    object_id: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AuditRecord:
    """Append one record in ``session``'s transaction, signed when the store is unsealed.

    ``action`` must be in :data:`ACTIONS` and ``outcome`` in :data:`OUTCOMES` (``ValueError``
    otherwise: a programming error). Prepared statements on the session's connection rather than
    ORM objects: this runs on every key release.
    """
    if action not in ACTIONS:
        raise ValueError(f"audit action {action!r} is not in keybroker.audit.log.ACTIONS")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome {outcome!r} is not one of {sorted(OUTCOMES)}")
    conn = session.connection()
    head = Head(*conn.execute(_HEAD).one())
    rec = AuditRecord(
        seq=head.seq + 1,
        time=now or datetime.now(UTC),
        actor=_clip(actor, MAX_ACTOR),
        action=action,
        object_id=None if object_id is None else _clip(object_id, MAX_OBJECT_ID),
        outcome=outcome,
        reason=None if reason is None else _clip(reason, MAX_REASON),
        details=_bound_details(details),
        prev_hash=head.hash,
        hash="",
        sig=None,
    )
    fields = _fields(rec)
    rec.hash = record_hash(rec.prev_hash, fields)
    guard = _GUARDS.get(conn.engine)
    if guard is not None:
        pending: list[tuple[Guard, int, str]] = session.info.setdefault(_PENDING, [])
        own = bool(pending) and pending[-1][1:] == (head.seq, head.hash)
        key = guard.before_append(session, head, own=own)
        if key is not None:
            rec.sig = sign_record(key, rec.hash)
        elif not unsigned_allowed(action, outcome):
            raise Sealed(f"the key store is sealed: a {action} {outcome} record cannot be signed")
        pending.append((guard, rec.seq, rec.hash))
    conn.execute(
        _INSERT,
        {**fields, "time": rec.time, "prev_hash": rec.prev_hash, "hash": rec.hash, "sig": rec.sig},
    )
    conn.execute(_ADVANCE, {"new_seq": rec.seq, "new_hash": rec.hash})
    return rec


def iter_records(session: Session, *, after: int = 0, limit: int | None = None) -> Iterator[AuditRecord]:
    q = select(AuditRecord).where(AuditRecord.seq > after).order_by(AuditRecord.seq)
    if limit is not None:
        q = q.limit(limit)
    yield from session.scalars(q)


def to_dict(rec: AuditRecord) -> dict[str, Any]:
    return {**_fields(rec), "prev_hash": rec.prev_hash, "hash": rec.hash, "sig": rec.sig}


# --- verification -----------------------------------------------------------------------------------


class ChainWalker:
    """Checks records one after the other from a trusted point: sequence, link, hash, signature.

    ``record_key`` None: signatures are not checked (only their presence is, from ``signed_from``).
    """

    def __init__(
        self, seq: int, hash_hex: str, *, signed_from: int, record_key: Ed25519PublicKey | None
    ) -> None:
        self.seq = seq
        self.hash = hash_hex
        self.signed_from = signed_from
        self.record_key = record_key
        self.signatures_checked = 0
        self.unsigned = 0

    def step(self, rec: AuditRecord) -> tuple[str, str] | None:
        """Advance over ``rec``; ``(check, problem)`` when it does not fit."""
        if rec.seq != self.seq + 1:
            return "chain", f"expected record {self.seq + 1}, found {rec.seq} (deleted or reordered)"
        if rec.prev_hash != self.hash:
            return "chain", "prev_hash does not match the previous record's hash"
        if record_hash(self.hash, _fields(rec)) != rec.hash:
            return "chain", "contents do not match the record's hash (edited)"
        if rec.sig is not None:
            if self.record_key is not None:
                if not signature_valid(self.record_key, rec.hash, rec.sig):
                    return (
                        "signature",
                        "the record's signature does not verify (forged, or rehashed after an edit)",
                    )
                self.signatures_checked += 1
        elif rec.seq >= self.signed_from:
            if not unsigned_allowed(rec.action, rec.outcome):
                return "signature", (
                    f"the record ({rec.action} {rec.outcome}) carries no signature, and only records "
                    "of actions that can happen while sealed may (inserted or stripped)"
                )
            self.unsigned += 1
        self.seq, self.hash = rec.seq, rec.hash
        return None


def follow(
    anchor_seq: int,
    anchor_hash: str,
    records: Sequence[AuditRecord],
    head: Head,
    *,
    record_key: Ed25519PublicKey | None,
) -> str | None:
    """Whether ``records`` lead from an authenticated anchor to ``head``; None, or what is wrong."""
    if head.seq < anchor_seq:
        return (
            f"the chain head went back from record {anchor_seq} to {head.seq} (records removed from the end)"
        )
    if head.seq == anchor_seq:
        return None if head.hash == anchor_hash else f"the chain head at record {head.seq} was rewritten"
    walker = ChainWalker(anchor_seq, anchor_hash, signed_from=head.signed_from, record_key=record_key)
    for rec in records:
        bad = walker.step(rec)
        if bad is not None:
            return f"record {rec.seq}: {bad[1]}"
        if rec.seq == head.seq:
            break
    if (walker.seq, walker.hash) != (head.seq, head.hash):
        return f"the chain head (record {head.seq}) is not reached from record {anchor_seq} by its records"
    return None


#: Records the checkpointer has not covered yet are accepted this long after they were written.
CHECKPOINT_SLACK = timedelta(seconds=10)


@dataclass(frozen=True)
class Anchors:
    """What ``verify_chain`` holds the database to: checkpoints read from outside it."""

    checkpoints: Sequence[Checkpoint]
    now: datetime
    #: A record older than this and not covered by a checkpoint fails (interval + slack).
    grace: timedelta = timedelta(seconds=1) + CHECKPOINT_SLACK


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    records: int
    #: The first record that does not fit, and why.
    bad_seq: int | None = None
    problem: str | None = None
    #: The check that failed: chain, head, signature, checkpoint, coverage.
    check: str | None = None
    signed_from: int = 1
    signatures_checked: int = 0
    #: Records after ``signed_from`` accepted without a signature (sealed-time actions, covered).
    unsigned: int = 0
    #: The newest checkpoint, and how many records come after it.
    checkpoint: Checkpoint | None = None
    uncovered: int = 0


_NEVER = 2**63


def _consistent(cps: Sequence[Checkpoint]) -> str | None:
    for a, b in zip(cps, cps[1:], strict=False):
        if a.seq == b.seq and a.hash != b.hash:
            return (
                f"two checkpoints of record {a.seq} disagree ({format_time(a.time)}, {format_time(b.time)})"
            )
        if a.signed_from != b.signed_from:
            return f"the checkpoints disagree on signed_from ({a.signed_from}, {b.signed_from})"
    if len({c.record_key for c in cps if c.record_key is not None}) > 1:
        return "the checkpoints name different record keys"
    if cps and cps[0].seq == 0 and cps[0].hash != GENESIS:
        return "a checkpoint of record 0 does not have the genesis hash"
    return None


def _public_key(b64: str) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError):
        return None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def verify_chain(session: Session, anchors: Anchors | None = None) -> ChainCheck:
    """Recompute the chain from genesis: edits, deletions, insertions and reordering, and the head.

    With ``anchors`` (the checkpoints; see :mod:`keybroker.audit.checkpoint`) also: every record
    from ``signed_from`` is signed by the record key the checkpoints name (or is a sealed-time
    record a checkpoint covers), the chain reaches every checkpoint's hash at its record and is not
    shorter than the newest, and records after the newest checkpoint are recent. Without them the
    check is the hash chain alone, which whoever can write the database can recompute.
    """
    head = session.get(AuditHead, 1)
    cps = sorted(anchors.checkpoints, key=lambda c: c.seq) if anchors is not None else []
    last_cp = cps[-1] if cps else None
    # without anchors signed_from is the database's word: nothing to hold signatures to
    signed_from = head.signed_from if head is not None and anchors is not None else _NEVER
    key: Ed25519PublicKey | None = None
    if anchors is not None:
        bad_file = _consistent(cps)
        if bad_file is not None:
            return ChainCheck(False, 0, None, bad_file, "checkpoint")
        if last_cp is not None:
            if head is not None and head.signed_from != last_cp.signed_from:
                return ChainCheck(
                    False,
                    0,
                    None,
                    f"audit_head.signed_from is {head.signed_from} but the checkpoints say "
                    f"{last_cp.signed_from} (moved to pass signed records off as older than signing)",
                    "head",
                )
            signed_from = last_cp.signed_from
        named = next((c.record_key for c in reversed(cps) if c.record_key is not None), None)
        if named is not None:
            key = _public_key(named)
            if key is None:
                return ChainCheck(
                    False, 0, None, "the checkpoints' record_key is not an Ed25519 key", "checkpoint"
                )
    by_seq = {c.seq: c for c in cps}
    walker = ChainWalker(0, GENESIS, signed_from=signed_from, record_key=key)
    late: tuple[int, str] | None = None  # the first coverage problem, reported after the rest
    uncovered = 0

    def fail(seq: int | None, check: str, problem: str) -> ChainCheck:
        return ChainCheck(
            False,
            walker.seq,
            seq,
            problem,
            check,
            signed_from,
            walker.signatures_checked,
            walker.unsigned,
            last_cp,
        )

    for rec in session.scalars(select(AuditRecord).order_by(AuditRecord.seq)).yield_per(500):
        bad = walker.step(rec)
        if bad is not None:
            return fail(rec.seq, *bad)
        cp = by_seq.get(rec.seq)
        if cp is not None and cp.hash != rec.hash:
            return fail(
                rec.seq,
                "checkpoint",
                f"the chain differs from the checkpoint of {format_time(cp.time)} at this record (history rewritten)",
            )
        if anchors is not None and (last_cp is None or rec.seq > last_cp.seq):
            uncovered += 1
            if late is None and rec.sig is None and rec.seq >= signed_from:
                late = (rec.seq, "the record is unsigned and no checkpoint covers it yet")
            elif late is None and anchors.now - _utc(rec.time) > anchors.grace:
                since = (
                    f"the newest, of {format_time(last_cp.time)}, covers records up to {last_cp.seq}"
                    if last_cp
                    else "there are none"
                )
                late = (
                    rec.seq,
                    f"the record, of {format_time(rec.time)}, is not covered by any checkpoint ({since}): "
                    "written behind the checkpointer's back, or no replica checkpointing into this data dir ran since",
                )
    count = walker.seq
    if last_cp is not None and last_cp.seq > count:
        return fail(
            count + 1,
            "checkpoint",
            f"the chain ends at record {count} but the checkpoint of {format_time(last_cp.time)} covers "
            f"{last_cp.seq} records (records removed from the end)",
        )
    if head is None or head.seq != count or head.hash != walker.hash:
        seq = count + 1 if head is None or head.seq > count else count
        return fail(seq, "head", "chain head does not match the last record (records removed from the end)")
    if late is not None:
        return fail(late[0], "coverage", late[1])
    return ChainCheck(
        True,
        count,
        signed_from=signed_from,
        signatures_checked=walker.signatures_checked,
        unsigned=walker.unsigned,
        checkpoint=last_cp,
        uncovered=uncovered,
    )
