"""A DBA rewrites the audit log in raw SQL; ``keybroker audit verify --data-dir D`` catches it.

Regression for issue 11, item 5: the chain's hash is unkeyed and its only head was in the same
database, so whoever could write the database could cut the tail and rewrite the head, delete
everything and reset the head to genesis, edit or delete a middle record and recompute the hashes
after it, or forge a record at the end with a valid hash, and ``audit verify`` said "intact". Now
records are signed with a key under the seal and the head is checkpointed, signed, in the data
dir; the tampering below is done on the database alone, as a DBA would, with the public hashing
algorithm.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, func, select, text, update
from sqlalchemy.orm import Session
from tests.helpers import postgres
from tests.helpers.api import TDX_POLICY
from tests.helpers.server import keybroker

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.audit.log import GENESIS, _fields, record_hash
from keybroker.config import Settings
from keybroker.store.models import AuditHead, AuditRecord


@dataclass
class Broker:
    data_dir: Path
    url: str
    #: Records written by the populated service.
    records: int


def _populate(data_dir: Path, url: str) -> int:
    """A service run: a policy, keys, reads and a refused call, then a clean shutdown."""
    svc = Services.build(Settings(data_dir=data_dir, database=url, dev=True))
    admin = {"Authorization": "Bearer " + svc.tokens.mint("admin", ["*:*"])}
    with TestClient(create_app(svc), base_url="https://testserver") as c:
        policy = TDX_POLICY
        assert c.post("/kbs/v1/key-transfer-policies", json=policy, headers=admin).status_code == 201
        for _ in range(4):
            body = {"key_information": {"algorithm": "AES", "key_length": 256}}
            assert c.post("/kbs/v1/keys", json=body, headers=admin).status_code == 201
        assert c.get("/kbs/v1/keys", headers=admin).status_code == 200
        assert c.get("/kbs/v1/keys").status_code == 401  # audited: key.search denied
    with svc.db.session() as s:  # those, and the admin token's token.create
        records = s.scalar(select(func.count()).select_from(AuditRecord))
    svc.db.dispose()
    assert records == 8
    return records


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def pristine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Broker:
    base = tmp_path_factory.mktemp("pristine")
    if request.param == "sqlite":
        url = f"sqlite:///{base / 'kb.db'}"
    else:
        server: postgres.PostgresServer = request.getfixturevalue("pg_server")
        url = server.create_database("kbt_" + uuid.uuid4().hex[:12])
    return Broker(base / "data", url, _populate(base / "data", url))


@pytest.fixture
def broker(pristine: Broker, tmp_path: Path) -> Broker:
    """A copy of the pristine data dir and database for one test to tamper with."""
    data_dir = tmp_path / "data"
    shutil.copytree(pristine.data_dir, data_dir)
    if pristine.url.startswith("sqlite"):
        src = Path(pristine.url.removeprefix("sqlite:///"))
        for f in src.parent.glob(src.name + "*"):
            shutil.copy(f, tmp_path / f.name)
        url = f"sqlite:///{tmp_path / src.name}"
    else:
        name = "kbc_" + uuid.uuid4().hex[:12]
        admin = create_engine(pristine.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {pristine.url.rsplit('/', 1)[1]}"))
        admin.dispose()
        url = pristine.url.rsplit("/", 1)[0] + "/" + name
    return Broker(data_dir, url, pristine.records)


def _verify(b: Broker, *extra: str) -> tuple[int, str, str]:
    r = keybroker("audit", "verify", "--data-dir", str(b.data_dir), "--database", b.url, *extra)
    return r.returncode, r.stdout, r.stderr


def _as_dba(b: Broker, change: Callable[[Session], None]) -> None:
    """Run ``change`` on the database with a plain engine: no keybroker service, no keys."""
    engine = create_engine(b.url)
    with Session(engine) as s, s.begin():
        change(s)
    engine.dispose()


def _rehash(s: Session) -> None:
    """Recompute every hash and link, and the head, from the records as they now are."""
    prev = GENESIS
    recs = list(s.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
    for rec in recs:
        rec.prev_hash = prev
        rec.hash = record_hash(prev, _fields(rec))
        prev = rec.hash
    s.flush()
    s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=recs[-1].seq if recs else 0, hash=prev))


def _failed(result: tuple[int, str, str], check: str, seq: int | None = None) -> str:
    code, out, err = result
    assert code == 1, out + err
    assert f"({check} check)" in err, err
    if seq is not None:
        assert f"at record {seq} " in err, err
    assert "Traceback" not in err
    return err


def test_a_clean_chain_verifies(broker: Broker) -> None:
    code, out, err = _verify(broker)
    assert code == 0, err
    assert f"audit chain intact: {broker.records} records" in out
    assert f"signatures: {broker.records} checked, required from record 1" in out
    assert f"the newest covers record {broker.records} " in out


# --- detected before, still detected -----------------------------------------------------------------


def test_plain_edit(broker: Broker) -> None:
    _as_dba(
        broker,
        lambda s: s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(actor="someone-else")),
    )
    assert "edited" in _failed(_verify(broker), "chain", 3)


def test_deleted_middle_record(broker: Broker) -> None:
    _as_dba(broker, lambda s: s.execute(delete(AuditRecord).where(AuditRecord.seq == 3)))
    assert "deleted or reordered" in _failed(_verify(broker), "chain", 4)


# --- the attacks of issue 11 -------------------------------------------------------------------------


def test_truncated_tail_with_head_rewritten(broker: Broker) -> None:
    def cut(s: Session) -> None:
        s.execute(delete(AuditRecord).where(AuditRecord.seq > 4))
        last = s.scalars(select(AuditRecord).where(AuditRecord.seq == 4)).one()
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=4, hash=last.hash))

    _as_dba(broker, cut)
    assert _verify(broker, "--no-checkpoints")[0] == 0  # the hash chain alone cannot tell
    err = _failed(_verify(broker), "checkpoint", 5)
    assert "ends at record 4 but the checkpoint" in err and f"covers {broker.records} records" in err


def test_everything_deleted_and_head_reset_to_genesis(broker: Broker) -> None:
    def wipe(s: Session) -> None:
        s.execute(delete(AuditRecord))
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=0, hash=GENESIS))

    _as_dba(broker, wipe)
    assert _verify(broker, "--no-checkpoints")[0] == 0
    assert "ends at record 0" in _failed(_verify(broker), "checkpoint", 1)


def test_middle_edit_with_hashes_recomputed(broker: Broker) -> None:
    def edit(s: Session) -> None:
        s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(actor="someone-else"))
        _rehash(s)

    _as_dba(broker, edit)
    assert _verify(broker, "--no-checkpoints")[0] == 0
    assert "signature does not verify" in _failed(_verify(broker), "signature", 3)


def test_middle_edit_with_hashes_recomputed_and_signatures_stripped(broker: Broker) -> None:
    def edit(s: Session) -> None:
        s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(actor="someone-else"))
        s.execute(update(AuditRecord).values(sig=None))
        _rehash(s)

    _as_dba(broker, edit)
    assert "carries no signature" in _failed(
        _verify(broker), "signature", 2
    )  # 1 is a token.create, which may be unsigned


def test_signed_from_moved_to_pass_everything_off_as_older_than_signing(broker: Broker) -> None:
    def edit(s: Session) -> None:
        s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(actor="someone-else"))
        s.execute(update(AuditRecord).values(sig=None))
        _rehash(s)
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(signed_from=broker.records + 1))

    _as_dba(broker, edit)
    assert f"signed_from is {broker.records + 1} but the checkpoints say 1" in _failed(
        _verify(broker), "head"
    )


def test_middle_delete_with_hashes_recomputed(broker: Broker) -> None:
    def remove(s: Session) -> None:
        s.execute(delete(AuditRecord).where(AuditRecord.seq == 3))
        for seq in range(4, broker.records + 1):  # one by one: the primary key stays unique
            s.execute(update(AuditRecord).where(AuditRecord.seq == seq).values(seq=seq - 1))
        _rehash(s)

    _as_dba(broker, remove)
    assert _verify(broker, "--no-checkpoints")[0] == 0
    assert "signature does not verify" in _failed(_verify(broker), "signature", 3)


def _forge(s: Session, *, action: str, outcome: str, sig: str | None) -> None:
    head = s.get(AuditHead, 1)
    assert head is not None
    rec = AuditRecord(
        seq=head.seq + 1,
        time=datetime.now(UTC),
        actor="token:admin",
        action=action,
        object_id=str(uuid.uuid4()),
        outcome=outcome,
        reason=None,
        details=None,
        prev_hash=head.hash,
        hash="",
        sig=sig,
    )
    rec.hash = record_hash(rec.prev_hash, _fields(rec))
    s.add(rec)
    head.seq, head.hash = rec.seq, rec.hash


def test_forged_tail_record_with_valid_hash(broker: Broker) -> None:
    _as_dba(broker, lambda s: _forge(s, action="key.transfer", outcome="success", sig=None))
    assert _verify(broker, "--no-checkpoints")[0] == 0
    assert "carries no signature" in _failed(_verify(broker), "signature", broker.records + 1)


def test_forged_tail_record_with_a_signature_copied_from_another(broker: Broker) -> None:
    def forge(s: Session) -> None:
        sig = s.scalars(select(AuditRecord.sig).where(AuditRecord.seq == 2)).one()
        _forge(s, action="key.delete", outcome="success", sig=sig)

    _as_dba(broker, forge)
    assert "signature does not verify" in _failed(_verify(broker), "signature", broker.records + 1)


def test_forged_unsigned_tail_record_of_a_sealed_time_action_needs_a_checkpoint(broker: Broker) -> None:
    _as_dba(broker, lambda s: _forge(s, action="sys.unseal", outcome="failed", sig=None))
    assert "unsigned and no checkpoint covers it" in _failed(_verify(broker), "coverage", broker.records + 1)


# --- checkpoints ---------------------------------------------------------------------------------------


def test_records_no_checkpoint_covers_fail_once_older_than_the_grace(broker: Broker) -> None:
    """A record appended behind the checkpointer's back (here: a service run without its lifespan,
    so no checkpointer) is accepted while recent, and fails once a checkpoint was due."""
    svc = Services.build(Settings(data_dir=broker.data_dir, database=broker.url, dev=True))
    admin = {"Authorization": "Bearer " + svc.tokens.mint("admin", ["*:*"])}
    c = TestClient(create_app(svc), base_url="https://testserver")  # not entered: no lifespan
    assert c.get("/kbs/v1/keys", headers=admin).status_code == 200
    svc.db.dispose()
    code, out, err = _verify(broker)
    assert code == 0, err
    assert "2 records after it, all recent" in out  # the token's token.create, the key.search
    assert "not covered by any checkpoint" in _failed(
        _verify(broker, "--grace", "0"), "coverage", broker.records + 1
    )


def test_a_changed_checkpoint_file_fails(broker: Broker) -> None:
    path = broker.data_dir / "audit-checkpoints.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(f'"seq":{broker.records}', '"seq":2')
    path.write_text("".join(lines))
    code, _, err = _verify(broker)
    assert code == 1 and "checkpoint-file check" in err and f"line {len(lines)}" in err


def test_no_checkpoints_is_a_failure_unless_asked_for(broker: Broker) -> None:
    (broker.data_dir / "audit-checkpoints.jsonl").unlink()
    code, _, err = _verify(broker)
    assert code == 1 and "no audit checkpoints at" in err
    code, out, _ = _verify(broker, "--no-checkpoints")
    assert code == 0 and "hash chain only" in out
