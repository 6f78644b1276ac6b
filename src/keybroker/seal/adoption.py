"""Which rows that decide a release (transfer policies, keys, ``/kbs/v0`` resources, approved TPM
AKs) carry a valid integrity tag, and the administrator's adoption of those that do not
(``keybroker.seal.integrity``).

A row without a tag was written before tags existed (or by someone writing the database directly);
a row whose tag does not verify was changed outside keybroker after it was tagged. Neither is ever
released on. :meth:`IntegrityReview.adopt` tags the untagged rows as they are now, and the changed
ones too only when asked (``include_changed``): the administrator who adopts vouches for what the
rows say, so the report lists each with the digest of its content, and the adoption's audit record
names every row it tagged with that digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from keybroker import jcs
from keybroker.audit import log as audit
from keybroker.seal import integrity
from keybroker.seal.integrity import RowIntegrity
from keybroker.store.db import Database
from keybroker.store.models import KbsResource, Key, TpmAk, TransferPolicy


@dataclass(frozen=True)
class Finding:
    table: str
    id: str
    #: "untagged" or "changed".
    state: str
    #: SHA-256 of the JCS serialization of what the tag covers (the row as it is now).
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"table": self.table, "id": self.id, "state": self.state, "sha256": self.sha256}


@dataclass(frozen=True)
class Report:
    #: Rows whose tag verifies, per table.
    verified: dict[str, int]
    #: Rows that do not: untagged or changed.
    findings: list[Finding] = field(default_factory=list)


_Row = TransferPolicy | Key | KbsResource | TpmAk
#: Each tagged table: its name, its model, what its tag covers, and which of its rows need one (an
#: AK only once approved: pending and revoked AKs are never trusted).
_TABLES: tuple[tuple[str, type[_Row], Callable[[Any], dict[str, Any]], ColumnElement[bool] | None], ...] = (
    (integrity.POLICIES, TransferPolicy, lambda r: integrity.policy_content(r.id, r.body), None),
    (integrity.KEYS, Key, integrity.key_content_of, None),
    (integrity.RESOURCES, KbsResource, integrity.resource_content_of, None),
    (integrity.AKS, TpmAk, integrity.ak_content_of, TpmAk.status == "approved"),
)


def _digest(content: dict[str, Any]) -> str:
    return hashlib.sha256(jcs.dumps(content)).hexdigest()


class IntegrityReview:
    def __init__(self, db: Database, tags: RowIntegrity) -> None:
        self._db = db
        self._tags = tags

    def _scan(self, s: Session, *, lock: bool) -> Iterator[tuple[str, _Row, dict[str, Any], str | None]]:
        """Each row with its content and state (None: its tag verifies)."""
        for table, model, content_of, needed in _TABLES:
            query = select(model)
            if needed is not None:
                query = query.where(needed)
            if lock:
                query = query.with_for_update()
            for found in s.scalars(query):
                row = cast(_Row, found)
                content = content_of(row)
                tag = row.integrity_tag
                if self._tags.verifies(content, tag):
                    yield table, row, content, None
                else:
                    yield table, row, content, "untagged" if tag is None else "changed"

    def report(self) -> Report:
        """Every tagged table's rows checked (``Sealed`` while sealed)."""
        verified = {table: 0 for table, *_ in _TABLES}
        findings: list[Finding] = []
        with self._db.session() as s:
            for table, _row, content, state in self._scan(s, lock=False):
                if state is None:
                    verified[table] += 1
                else:
                    findings.append(Finding(table, str(content["id"]), state, _digest(content)))
        return Report(verified, findings)

    def adopt(self, *, actor: str, include_changed: bool = False) -> Report:
        """Tag the untagged rows as they are (and the changed ones with ``include_changed``), in one
        transaction with its audit record; the report lists what was adopted, and what was left."""
        verified = {table: 0 for table, *_ in _TABLES}
        adopted: list[Finding] = []
        left: list[Finding] = []
        with self._db.session() as s:
            for table, row, content, state in self._scan(s, lock=True):
                if state is None:
                    verified[table] += 1
                    continue
                finding = Finding(table, str(content["id"]), state, _digest(content))
                if state == "changed" and not include_changed:
                    left.append(finding)
                    continue
                row.integrity_tag = self._tags.tag(content)
                adopted.append(finding)
            audit.append(
                s,
                actor=actor,
                action="integrity.adopt",
                outcome="success",
                details={
                    "adopted": [f.to_dict() for f in adopted],
                    "left": [f.to_dict() for f in left],
                    "include_changed": include_changed,
                },
            )
        for f in adopted:
            verified[f.table] += 1
        return Report(verified, [*(Finding(f.table, f.id, "adopted", f.sha256) for f in adopted), *left])
