"""The appraisal inputs of recent attempts, kept with their audit records.

A key transfer, a ``/kbs/v0`` release or an attestation is decided on one input document
(:mod:`keybroker.appraisal.input`): the verified claims, the TCB status, ``sim`` and the caller's
client permissions. None of it is secret (no evidence, nonce or key material), and an operator who
changes a policy wants to know what the new one would have said about yesterday's denied workload.
So :meth:`AppraisalInputs.append` writes the audit record of such an attempt with the document's
SHA-256 (``input_sha256``, of its JCS form) in the record's details, and keeps the document itself
in ``appraisal_inputs``, keyed by the record's ``seq``, in the same transaction. Only the newest
``keep`` documents are kept (older ones are deleted as new ones come); the digest stays in the
chain for good.

The digest is what makes the kept document trustworthy: the audit record is hash-chained and
signed, the table is not, so :meth:`AppraisalInputs.recorded` compares the two and refuses a
document that does not match its record (changed in the database). The console tests a policy on
a recorded document with the same code as ``keybroker policy test`` (``appraisal.trial``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.orm import Session

from keybroker import jcs
from keybroker.audit import log as audit
from keybroker.errors import Conflict, NotFound
from keybroker.store.models import AppraisalInputRecord, AuditRecord

__all__ = ["MAX_DOCUMENT_BYTES", "AppraisalInputs", "RecordedAttempt", "input_sha256"]

#: A larger document is not kept (its digest still goes into the audit record).
MAX_DOCUMENT_BYTES: Final = 64 * 1024
#: The details member of the audit record that holds the document's digest.
DIGEST_FIELD: Final = "input_sha256"

_INSERT = insert(AppraisalInputRecord)
_NTH_NEWEST = (
    select(AppraisalInputRecord.audit_seq)
    .order_by(AppraisalInputRecord.audit_seq.desc())
    .limit(1)
    .offset(bindparam("keep", type_=None))
    .scalar_subquery()
)
# every document older than the newest `keep` (none while there are fewer)
_PRUNE = delete(AppraisalInputRecord).where(AppraisalInputRecord.audit_seq <= _NTH_NEWEST)


def _canonical(doc: Mapping[str, Any]) -> bytes | None:
    try:
        return jcs.dumps(dict(doc))
    except (TypeError, ValueError):  # not JSON (a programming error elsewhere): nothing to keep
        return None


def input_sha256(doc: Mapping[str, Any]) -> str | None:
    """SHA-256 of the document's JCS form (RFC 8785), as the audit record names it."""
    canonical = _canonical(doc)
    return None if canonical is None else hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class RecordedAttempt:
    """An attempt whose input document is kept: its audit record's facts and the document."""

    seq: int
    time: datetime
    actor: str
    action: str
    object_id: str | None
    outcome: str
    reason: str | None
    tee: str
    document: dict[str, Any]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class AppraisalInputs:
    """Writes attempts' audit records with their input documents, and reads them back."""

    def __init__(self, keep: int) -> None:
        if keep < 0:
            raise ValueError("keep must not be negative")
        self.keep = keep

    def append(
        self,
        s: Session,
        doc: Mapping[str, Any] | None,
        *,
        actor: str,
        action: str,
        outcome: str,
        object_id: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """:func:`keybroker.audit.log.append`, naming ``doc`` (the attempt's appraisal input, None if
        the attempt never got that far) by its digest in ``details`` and keeping it (the newest
        :attr:`keep`) in the same transaction."""
        canonical = None if doc is None else _canonical(doc)
        if canonical is not None:
            details = {**(details or {}), DIGEST_FIELD: hashlib.sha256(canonical).hexdigest()}
        record = audit.append(
            s,
            actor=actor,
            action=action,
            outcome=outcome,
            object_id=object_id,
            reason=reason,
            details=details,
        )
        if doc is not None and canonical is not None and self.keep and len(canonical) <= MAX_DOCUMENT_BYTES:
            conn = s.connection()
            conn.execute(
                _INSERT,
                {
                    "audit_seq": record.seq,
                    "recorded_at": record.time,
                    "action": action,
                    "tee": str(doc.get("tee") or "")[:32],
                    "document": dict(doc),
                    "sha256": details[DIGEST_FIELD] if details else "",
                },
            )
            conn.execute(_PRUNE, {"keep": self.keep})
        return record

    @staticmethod
    def recent(s: Session, *, limit: int = 50) -> list[RecordedAttempt]:
        """The newest attempts whose document is kept, newest first (documents not checked: for a
        list to choose from; :meth:`recorded` checks the one chosen)."""
        q = (
            select(AuditRecord, AppraisalInputRecord)
            .join(AppraisalInputRecord, AppraisalInputRecord.audit_seq == AuditRecord.seq)
            .order_by(AuditRecord.seq.desc())
            .limit(limit)
        )
        return [_attempt(r, i) for r, i in s.execute(q)]

    @staticmethod
    def kept(s: Session, seqs: list[int]) -> set[int]:
        """Which of the audit records ``seqs`` have their input document kept."""
        if not seqs:
            return set()
        q = select(AppraisalInputRecord.audit_seq).where(AppraisalInputRecord.audit_seq.in_(seqs))
        return set(s.scalars(q))

    @staticmethod
    def recorded(s: Session, seq: int) -> RecordedAttempt:
        """The attempt of audit record ``seq`` with its document, which must match the digest the
        record names (:class:`Conflict` if it does not: the table was changed behind the chain)."""
        found = s.execute(
            select(AuditRecord, AppraisalInputRecord)
            .join(AppraisalInputRecord, AppraisalInputRecord.audit_seq == AuditRecord.seq)
            .where(AuditRecord.seq == seq)
        ).first()
        if found is None:
            raise NotFound(
                f"no appraisal input is kept for audit record {seq} (only the newest attempts' are, "
                "and only of attempts whose evidence verified)"
            )
        record, kept = found
        named = (record.details or {}).get(DIGEST_FIELD)
        actual = input_sha256(kept.document)
        if named is None or actual is None or named != actual:
            raise Conflict(
                f"the appraisal input kept for audit record {seq} does not match the digest the record "
                "names: it was changed in the database, and is not used"
            )
        return _attempt(record, kept)


def _attempt(record: AuditRecord, kept: AppraisalInputRecord) -> RecordedAttempt:
    return RecordedAttempt(
        seq=record.seq,
        time=_utc(record.time),
        actor=record.actor,
        action=record.action,
        object_id=record.object_id,
        outcome=record.outcome,
        reason=record.reason,
        tee=kept.tee,
        document=dict(kept.document),
    )
