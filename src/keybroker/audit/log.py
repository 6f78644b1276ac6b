"""Hash-chained audit log.

Each record's hash is SHA-256 over the previous record's hash and the JCS-canonical JSON (RFC 8785)
of the record's fields. The chain head lives in ``audit_head`` and is locked (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite serializes writers) while a record is appended, so replicas sharing
one database append one chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from keybroker.store.models import AuditHead, AuditRecord

GENESIS = "0" * 64


def _timestamp(value: datetime) -> str:
    if value.tzinfo is None:  # SQLite returns naive datetimes; we store UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + rfc8785.dumps(fields)).hexdigest()


def _fields(rec: AuditRecord) -> dict[str, Any]:
    return {
        "seq": rec.seq,
        "time": _timestamp(rec.time),
        "actor": rec.actor,
        "action": rec.action,
        "object_id": rec.object_id,
        "outcome": rec.outcome,
        "reason": rec.reason,
        "details": rec.details,
    }


#: The chain head, locked until the transaction ends (the appends of all replicas queue here).
_HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
_INSERT = insert(AuditRecord)
_ADVANCE = (
    update(AuditHead).where(AuditHead.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


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
    """Append one record in ``session``'s transaction.

    Prepared statements on the session's connection rather than ORM objects: this runs on every
    key release, where building and flushing ORM statements cost ten times the hashing.
    """
    conn = session.connection()
    head_seq, head_hash = conn.execute(_HEAD).one()
    rec = AuditRecord(
        seq=head_seq + 1,
        time=now or datetime.now(UTC),
        actor=actor,
        action=action,
        object_id=object_id,
        outcome=outcome,
        reason=reason,
        details=details,
        prev_hash=head_hash,
        hash="",
    )
    rec.hash = record_hash(rec.prev_hash, _fields(rec))
    conn.execute(_INSERT, {**_fields(rec), "time": rec.time, "prev_hash": rec.prev_hash, "hash": rec.hash})
    conn.execute(_ADVANCE, {"new_seq": rec.seq, "new_hash": rec.hash})
    return rec


def iter_records(session: Session, *, after: int = 0, limit: int | None = None) -> Iterator[AuditRecord]:
    q = select(AuditRecord).where(AuditRecord.seq > after).order_by(AuditRecord.seq)
    if limit is not None:
        q = q.limit(limit)
    yield from session.scalars(q)


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    records: int
    #: The first record that does not fit, and why.
    bad_seq: int | None = None
    problem: str | None = None


def verify_chain(session: Session) -> ChainCheck:
    """Recompute the chain from genesis; catch edits, deletions, insertions and reordering."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for rec in session.scalars(select(AuditRecord).order_by(AuditRecord.seq)).yield_per(500):
        if rec.seq != expected_seq:
            return ChainCheck(
                False,
                count,
                rec.seq,
                f"expected record {expected_seq}, found {rec.seq} (deleted or reordered)",
            )
        if rec.prev_hash != prev:
            return ChainCheck(False, count, rec.seq, "prev_hash does not match the previous record's hash")
        if record_hash(prev, _fields(rec)) != rec.hash:
            return ChainCheck(False, count, rec.seq, "contents do not match the record's hash (edited)")
        prev = rec.hash
        expected_seq += 1
        count += 1
    head = session.get(AuditHead, 1)
    if head is None or head.seq != count or head.hash != prev:
        seq = count + 1 if head is None or head.seq > count else count
        return ChainCheck(
            False, count, seq, "chain head does not match the last record (records removed from the end)"
        )
    return ChainCheck(True, count)


def to_dict(rec: AuditRecord) -> dict[str, Any]:
    return {**_fields(rec), "prev_hash": rec.prev_hash, "hash": rec.hash}
