"""The appraisal inputs kept with attempts' audit records: the digest in the signed record, the
newest ``keep`` documents kept and no more, and a document changed in the database refused."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, update

from keybroker.api.services import Services
from keybroker.audit import log as audit
from keybroker.audit.inputs import MAX_DOCUMENT_BYTES, AppraisalInputs, input_sha256
from keybroker.errors import Conflict, NotFound
from keybroker.store.models import AppraisalInputRecord


def _doc(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "tee": "tdx",
        "claims": {"mr_td": f"{n:096x}", "debug": False},
        "tcb": {"status": "UpToDate", "advisory_ids": []},
        "sim": True,
        "client_permissions": None,
        **extra,
    }


def _append(services: Services, inputs: AppraisalInputs, doc: dict[str, Any] | None) -> int:
    with services.db.session() as s:
        rec = inputs.append(
            s, doc, actor="t", action="key.transfer", object_id="k", outcome="denied", details={"a": 1}
        )
        return rec.seq


def _kept(services: Services) -> list[int]:
    with services.db.session() as s:
        return sorted(s.scalars(select(AppraisalInputRecord.audit_seq)))


def test_the_newest_are_kept_and_named_by_their_record(services: Services) -> None:
    inputs = AppraisalInputs(3)
    seqs = [_append(services, inputs, _doc(n)) for n in range(5)]
    assert _kept(services) == seqs[2:]
    with services.db.session() as s:
        records = {r.seq: r for r in audit.iter_records(s)}
        for n, seq in enumerate(seqs):
            assert records[seq].details == {"a": 1, "input_sha256": input_sha256(_doc(n))}
        got = AppraisalInputs.recorded(s, seqs[-1])
        assert got.document == _doc(4) and (got.action, got.outcome, got.object_id) == (
            "key.transfer",
            "denied",
            "k",
        )
        assert [a.seq for a in AppraisalInputs.recent(s)] == seqs[:1:-1]
        assert AppraisalInputs.kept(s, seqs) == set(seqs[2:])
        with pytest.raises(NotFound, match="only the newest"):
            AppraisalInputs.recorded(s, seqs[0])


def test_a_document_changed_in_the_database_is_refused(services: Services) -> None:
    """The attack: someone with write access to the database edits a kept document (say, to make a
    denied workload's claims look like an allowed one's). The signed audit record names the
    original's digest, so the edited one is not used."""
    inputs = AppraisalInputs(10)
    seq = _append(services, inputs, _doc(1))
    with services.db.session() as s:
        s.execute(
            update(AppraisalInputRecord)
            .where(AppraisalInputRecord.audit_seq == seq)
            .values(document=_doc(2), sha256=input_sha256(_doc(2)))
        )
    with services.db.session() as s, pytest.raises(Conflict, match="changed in the database"):
        AppraisalInputs.recorded(s, seq)


def test_none_kept_and_what_is_never_kept(services: Services) -> None:
    seq = _append(services, AppraisalInputs(0), _doc(1))
    assert _kept(services) == []
    big = _doc(2, claims={"blob": "x" * MAX_DOCUMENT_BYTES})
    big_seq = _append(services, AppraisalInputs(5), big)
    no_doc = _append(services, AppraisalInputs(5), None)
    assert _kept(services) == []
    with services.db.session() as s:
        records = {r.seq: r for r in audit.iter_records(s)}
        assert s.scalar(select(func.count()).select_from(AppraisalInputRecord)) == 0
    assert records[seq].details["input_sha256"] == input_sha256(_doc(1))
    assert records[big_seq].details["input_sha256"] == input_sha256(big)
    assert records[no_doc].details == {"a": 1}
    with pytest.raises(ValueError):
        AppraisalInputs(-1)
