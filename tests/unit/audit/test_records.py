"""What ``append`` accepts and stores: a fixed vocabulary, bounded fields, signatures only under the seal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from keybroker.audit import log as audit
from keybroker.audit.guard import ChainGuard
from keybroker.errors import Sealed
from keybroker.seal.barrier import Barrier
from keybroker.store.db import Database
from keybroker.store.models import AuditRecord


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(f"sqlite:///{tmp_path / 'a.db'}")
    d.migrate()
    return d


@pytest.mark.parametrize(
    "action", ["GET /kbs/v1/x", "key.transfer\n2026-01-01 FAKE", "", "KEY.TRANSFER", "key.transfer "]
)
def test_an_action_outside_the_vocabulary_is_a_programming_error(db: Database, action: str) -> None:
    with pytest.raises(ValueError, match="not in keybroker.audit.log.ACTIONS"), db.session() as s:
        audit.append(s, actor="t", action=action, outcome="success")
    with db.session() as s:
        assert list(audit.iter_records(s)) == []


def test_an_outcome_outside_the_vocabulary_is_a_programming_error(db: Database) -> None:
    with pytest.raises(ValueError, match="outcome"), db.session() as s:
        audit.append(s, actor="t", action="key.create", outcome="ok")


def test_every_action_the_code_writes_is_in_the_vocabulary() -> None:
    """Each literal ``action="..."`` of an ``audit.append`` call in the sources, and the route map."""
    import re

    from keybroker.api.app import FAILURE_ACTIONS

    src = Path(audit.__file__).resolve().parents[1]
    written = set()
    for path in src.rglob("*.py"):
        written |= set(re.findall(r'action="([^"]+)"', path.read_text()))
        written |= set(re.findall(r'action = "([^"]+)"', path.read_text()))
    assert written, "no audit.append call found"
    assert written <= audit.ACTIONS, written - audit.ACTIONS
    assert {a for a in FAILURE_ACTIONS.values() if a is not None} <= audit.ACTIONS
    assert set(audit.SEALED_ACTIONS) <= audit.ACTIONS


def test_fields_are_bounded_and_the_cut_is_marked(db: Database) -> None:
    with db.session() as s:
        audit.append(
            s,
            actor="a" * 1000,
            action="key.retrieve",
            outcome="failed",
            object_id="o" * 300,
            reason="r" * 100_000,
            details={"blob": "x" * 20_000, "n": 1},
        )
        audit.append(s, actor="short", action="key.retrieve", outcome="success", details={"n": 2})
    with db.session() as s:
        big, small = list(audit.iter_records(s))
        assert len(big.actor) == audit.MAX_ACTOR and big.actor.endswith("...[truncated, 1000 chars]")
        assert len(big.object_id or "") == audit.MAX_OBJECT_ID and (big.object_id or "").endswith(
            "300 chars]"
        )
        assert len(big.reason or "") == audit.MAX_REASON and (big.reason or "").endswith("100000 chars]")
        assert big.details is not None and set(big.details) == {"_truncated"}
        assert big.details["_truncated"]["bytes"] > audit.MAX_DETAILS
        assert small.actor == "short" and small.details == {"n": 2} and small.reason is None
        assert len(json.dumps(big.details)) < 200
        assert audit.verify_chain(s).ok


def _unsealed_guard(db: Database, tmp_path: Path) -> tuple[Barrier, ChainGuard]:
    barrier = Barrier(db)
    barrier.init_devfile(tmp_path / "unseal.key")
    barrier.unseal_devfile(tmp_path / "unseal.key")
    guard = ChainGuard(barrier)
    audit.attach_guard(db.engine, guard)
    return barrier, guard


def test_records_are_signed_while_unsealed_and_only_sealed_time_actions_go_unsigned(
    db: Database, tmp_path: Path
) -> None:
    barrier, guard = _unsealed_guard(db, tmp_path)
    with db.session() as s:
        audit.append(s, actor="t", action="key.create", outcome="success")
    barrier.seal()
    with db.session() as s:
        audit.append(s, actor="operator", action="sys.unseal", outcome="failed")
    with pytest.raises(Sealed, match="cannot be signed"), db.session() as s:
        audit.append(s, actor="t", action="key.create", outcome="success")
    with pytest.raises(Sealed), db.session() as s:
        audit.append(s, actor="t", action="sys.unseal", outcome="success")
    with db.session() as s:
        recs = list(s.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
    assert [(r.action, r.sig is not None) for r in recs] == [("key.create", True), ("sys.unseal", False)]
    assert guard.signing_key() is None  # dropped with the seal

    # another replica (another barrier, the same root key) derives the same record key
    replica = Barrier(db)
    replica.unseal_devfile(tmp_path / "unseal.key")
    public = audit.record_key(replica.derive_key(audit.RECORD_KEY_LABEL)).public_key()
    assert audit.signature_valid(public, recs[0].hash, recs[0].sig or "")
    assert not audit.signature_valid(public, recs[1].hash, recs[0].sig or "")
    assert replica.derive_key(b"another label") != replica.derive_key(audit.RECORD_KEY_LABEL)


def test_appends_in_one_transaction_and_a_rolled_back_append_keep_the_anchor_true(
    db: Database, tmp_path: Path
) -> None:
    """The anchor moves only with commits: a rolled-back record must not look like a cut tail."""
    _, guard = _unsealed_guard(db, tmp_path)
    with db.session() as s:
        for _ in range(20):
            audit.append(s, actor="t", action="key.search", outcome="success")
    assert guard.anchor is not None and guard.anchor[0] == 20
    with pytest.raises(RuntimeError), db.session() as s:
        audit.append(s, actor="t", action="key.create", outcome="success")
        raise RuntimeError("the key store failed after the audit record")
    assert guard.anchor[0] == 20
    with db.session() as s:
        rec = audit.append(s, actor="t", action="key.create", outcome="success")
    assert rec.seq == 21 and guard.alarm is None and guard.anchor == (21, rec.hash)
    with db.session() as s:
        assert all(r.sig is not None for r in audit.iter_records(s))
