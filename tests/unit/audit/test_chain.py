from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, select, update

from keybroker.audit import log as audit
from keybroker.store.db import Database
from keybroker.store.models import AuditRecord

_ACTIONS = ("key.create", "key.retrieve", "key.search", "key.delete", "policy.create")


def _db(tmp_path: Path, n: int = 5) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    db.migrate()
    for i in range(n):
        with db.session() as s:
            audit.append(
                s,
                actor="t",
                action=_ACTIONS[i % len(_ACTIONS)],
                outcome="success",
                object_id=str(i),
                details={"i": i},
            )
    return db


def test_intact_chain(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with db.session() as s:
        result = audit.verify_chain(s)
    assert result.ok and result.records == 5


def test_edit_detected(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with db.session() as s:
        s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(outcome="denied"))
    with db.session() as s:
        result = audit.verify_chain(s)
    assert not result.ok and result.bad_seq == 3 and "edited" in (result.problem or "")


def test_deletion_in_middle_detected(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with db.session() as s:
        s.execute(delete(AuditRecord).where(AuditRecord.seq == 2))
    with db.session() as s:
        result = audit.verify_chain(s)
    assert not result.ok and result.bad_seq == 3


def test_deletion_at_end_detected(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with db.session() as s:
        s.execute(delete(AuditRecord).where(AuditRecord.seq == 5))
    with db.session() as s:
        result = audit.verify_chain(s)
    assert not result.ok and "head" in (result.problem or "")


def test_reorder_detected(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with db.session() as s:
        a = s.scalars(select(AuditRecord).where(AuditRecord.seq == 2)).one()
        b = s.scalars(select(AuditRecord).where(AuditRecord.seq == 3)).one()
        a.action, b.action = b.action, a.action
        a.object_id, b.object_id = b.object_id, a.object_id
        a.details, b.details = b.details, a.details
    with db.session() as s:
        result = audit.verify_chain(s)
    assert not result.ok and result.bad_seq == 2


def test_consistently_rehashed_edit_is_caught_by_the_head(tmp_path: Path) -> None:
    """An attacker who edits the last record and recomputes its hash still breaks the link to the head row."""
    db = _db(tmp_path, 3)
    with db.session() as s:
        rec = s.scalars(select(AuditRecord).where(AuditRecord.seq == 3)).one()
        rec.outcome = "denied"
        rec.hash = audit.record_hash(rec.prev_hash, audit._fields(rec))
    with db.session() as s:
        result = audit.verify_chain(s)
    assert not result.ok and "head" in (result.problem or "")
