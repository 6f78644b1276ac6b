"""An audit chain written before records were signed keeps verifying after the upgrade (migration
0007 sets ``signed_from`` past it), and the checkpoints protect it from then on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, select, text, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.audit.checkpoint import format_time
from keybroker.audit.log import GENESIS, _fields, record_hash
from keybroker.cli.main import app as cli
from keybroker.config import Settings
from keybroker.store import db as store_db
from keybroker.store.models import AuditHead, AuditRecord

LEGACY = 3


def _legacy_database(url: str) -> None:
    """The schema at revision 0006 and three records as the old code wrote them (no ``sig``)."""
    engine: Engine = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_db.__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
    prev = GENESIS
    with engine.begin() as conn:
        for seq in range(1, LEGACY + 1):
            when = datetime.now(UTC)
            fields = {
                "seq": seq,
                "time": format_time(when),
                "actor": "token:admin",
                "action": "key.create",
                "object_id": f"legacy-{seq}",
                "outcome": "success",
                "reason": None,
                "details": None,
            }
            digest = record_hash(prev, fields)
            conn.execute(
                text(
                    "INSERT INTO audit_log (seq, time, actor, action, object_id, outcome, prev_hash, hash) "
                    "VALUES (:seq, :time, :actor, :action, :object_id, :outcome, :prev, :hash)"
                ),
                {**fields, "time": when, "prev": prev, "hash": digest},
            )
            prev = digest
        conn.execute(
            text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"), {"seq": LEGACY, "hash": prev}
        )
    engine.dispose()


def _run(data_dir: Path, url: str, *, create_key: bool) -> None:
    svc = Services.build(Settings(data_dir=data_dir, database=url, dev=True))  # migrates to 0007
    with TestClient(create_app(svc), base_url="https://testserver") as c:
        if create_key:
            h = {"Authorization": "Bearer " + svc.tokens.mint("admin", ["*:*"])}
            body = {"key_information": {"algorithm": "AES", "key_length": 256}}
            assert c.post("/kbs/v1/keys", json=body, headers=h).status_code == 201
    svc.db.dispose()


def _verify(data_dir: Path, url: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["audit", "verify", "--data-dir", str(data_dir), "--database", url])
    return r.exit_code, r.output


def test_a_legacy_chain_keeps_verifying_and_new_records_are_signed(tmp_path: Path, database_url: str) -> None:
    _legacy_database(database_url)
    _run(tmp_path / "data", database_url, create_key=True)
    code, out = _verify(tmp_path / "data", database_url)
    assert code == 0, out
    assert f"audit chain intact: {LEGACY + 2} records" in out  # the admin token's token.create, key.create
    assert f"signatures: 2 checked, required from record {LEGACY + 1}" in out
    engine = create_engine(database_url)
    with Session(engine) as s:
        head = s.get(AuditHead, 1)
        assert head is not None and head.signed_from == LEGACY + 1
        sigs = [sig for (sig,) in s.execute(select(AuditRecord.sig).order_by(AuditRecord.seq))]
    engine.dispose()
    assert sigs[:LEGACY] == [None] * LEGACY and None not in sigs[LEGACY:]


def test_a_rehashed_edit_of_legacy_records_is_caught_by_the_checkpoint(
    tmp_path: Path, database_url: str
) -> None:
    """Unsigned records have only the checkpoints: the first start after the upgrade covers them."""
    _legacy_database(database_url)
    _run(tmp_path / "data", database_url, create_key=False)
    assert _verify(tmp_path / "data", database_url)[0] == 0
    engine = create_engine(database_url)
    with Session(engine) as s, s.begin():
        s.execute(update(AuditRecord).where(AuditRecord.seq == 2).values(actor="someone-else"))
        prev = GENESIS
        for rec in s.scalars(select(AuditRecord).order_by(AuditRecord.seq)):
            rec.prev_hash, rec.hash = prev, record_hash(prev, _fields(rec))
            prev = rec.hash
        s.flush()
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))
    engine.dispose()
    code, out = _verify(tmp_path / "data", database_url)
    assert code == 1
    assert f"at record {LEGACY} (checkpoint check)" in out and "history rewritten" in out


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
