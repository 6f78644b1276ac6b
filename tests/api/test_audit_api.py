"""The audit log seen from outside: what requests can put in it, how it prints, how a replica
reacts when the chain it extends was forged, and the signed checkpoints it serves."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, func, select, update
from sqlalchemy.orm import Session
from tests.helpers.api import token_headers
from typer.testing import CliRunner

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.audit import checkpoint
from keybroker.audit.log import _fields, record_hash
from keybroker.cli.main import app as cli
from keybroker.config import Settings
from keybroker.store.models import AuditHead, AuditRecord

AES = {"key_information": {"algorithm": "AES", "key_length": 256}}


def _without_token_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records but those of the tokens the test minted (each mint is audited as token.create)."""
    return [r for r in records if r["action"] != "token.create"]


def _count(services: Services) -> int:
    with services.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def _metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start}")


def _eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the checkpoint interval"
        time.sleep(0.1)


# --- item 4: the log is not a log of request text ---------------------------------------------------


def test_unmatched_routes_are_counted_not_audited(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """Before: the raw path became the record's action, one record per request, any length."""
    before = _count(services)
    fake = "/kbs/v1/x%0a2026-01-01T00:00:00Z%20FAKE%20key.transfer%20success"
    assert client.get(fake, headers=admin_headers).status_code == 404
    assert client.get("/kbs/v1/" + "a" * 15_000).status_code == 404
    assert client.delete("/kbs/v1/nothing/here").status_code == 404
    assert _count(services) == before
    assert (
        _metric(client, 'keybroker_http_requests_total{method="GET",route="<unmatched>",status="404"}') == 2
    )
    assert (
        _metric(client, 'keybroker_http_requests_total{method="DELETE",route="<unmatched>",status="404"}')
        == 1
    )


def test_a_method_a_route_does_not_have_is_not_audited(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    before = _count(services)
    assert client.patch("/kbs/v1/keys", json={}, headers=admin_headers).status_code == 405
    assert _count(services) == before


def test_failed_admin_calls_are_audited_under_the_routes_action(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    kid = str(uuid.uuid4())
    client.get(f"/kbs/v1/keys/{kid}", headers=admin_headers)  # 404
    client.delete(f"/kbs/v1/key-transfer-policies/{kid}")  # 401
    client.get("/kbs/v1/audit", headers=token_headers(services, "keys:search"))  # 403
    client.get("/kbs/v1/audit/checkpoint")  # 401
    records = _without_token_records(client.get("/kbs/v1/audit", headers=admin_headers).json())
    assert [(r["action"], r["outcome"], r["object_id"]) for r in records] == [
        ("key.retrieve", "failed", kid),
        ("policy.delete", "denied", kid),
        ("audit.read", "denied", None),
        ("audit.read", "denied", None),
    ]


def test_request_text_in_a_record_is_bounded_and_prints_escaped(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """A path parameter with a newline and a forged-looking line, and one of 15 KB: both audited
    (failed key.retrieve), bounded, and printed by ``audit list`` as one row each, escaped."""
    injected = "abc\n2026-01-01T00:00:00Z FAKE key.transfer success\u202e"
    path = "/kbs/v1/keys/abc%0a2026-01-01T00:00:00Z%20FAKE%20key.transfer%20success%E2%80%AE"
    assert client.get(path, headers=admin_headers).status_code == 404
    assert client.get("/kbs/v1/keys/" + "k" * 15_000, headers=admin_headers).status_code == 404
    records = _without_token_records(client.get("/kbs/v1/audit", headers=admin_headers).json())
    assert [r["action"] for r in records] == ["key.retrieve", "key.retrieve"]
    assert records[0]["object_id"] == injected
    long = records[1]["object_id"]
    assert len(long) == 256 and long.endswith("...[truncated, 15000 chars]")
    assert len(records[1]["reason"]) == 4096 and records[1]["reason"].endswith("chars]")

    runner = CliRunner()
    args = ["audit", "list", "--data-dir", str(services.settings.data_dir), "--database", services.db.url]
    out = runner.invoke(cli, args, env={"COLUMNS": "1000"})
    assert out.exit_code == 0, out.output
    assert "abc\\x0a2026-01-01T00:00:00Z FAKE key.transfer success\\u202e" in out.output
    assert not any(line.lstrip().startswith("2026-01-01") for line in out.output.splitlines())
    assert "\u202e" not in out.output
    out = runner.invoke(cli, [*args, "--json"])
    listed = _without_token_records([json.loads(line) for line in out.output.splitlines()])
    assert len(listed) == 2 and listed[0]["object_id"] == injected


# --- item 5: a replica does not extend a chain it cannot authenticate --------------------------------


def _dba(services: Services, change: Callable[[Session], None]) -> None:
    """Raw changes by someone with database access only (a plain engine: no keybroker keys)."""
    engine = create_engine(services.db.url)
    with Session(engine) as s, s.begin():
        change(s)
    engine.dispose()


def _forge_tail(s: Session) -> None:
    head = s.get(AuditHead, 1)
    assert head is not None
    rec = AuditRecord(
        seq=head.seq + 1,
        time=datetime.now(UTC),
        actor="token:admin",
        action="key.transfer",
        object_id=str(uuid.uuid4()),
        outcome="success",
        reason=None,
        details=None,
        prev_hash=head.hash,
        hash="",
        sig=None,
    )
    rec.hash = record_hash(rec.prev_hash, _fields(rec))
    s.add(rec)
    head.seq, head.hash = rec.seq, rec.hash


def test_a_replica_refuses_to_append_on_a_forged_head(
    client: TestClient, services: Services, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    assert client.post("/kbs/v1/keys", json=AES, headers=admin_headers).status_code == 201
    _dba(services, _forge_tail)
    forged = _count(services)

    with caplog.at_level(logging.ERROR, logger="keybroker.audit"):
        r = client.post("/kbs/v1/keys", json=AES, headers=admin_headers)
    assert r.status_code == 503, r.text
    assert r.json()["title"] == "Audit chain alarm"
    assert f"record {forged}" in r.json()["detail"] and "carries no signature" in r.json()["detail"]
    assert any("AUDIT CHAIN ALARM" in m for m in caplog.messages)
    assert _metric(client, "keybroker_audit_chain_alarm ") == 1
    assert client.get("/readyz").status_code == 503
    # refused up front, and nothing was written on top of the forged record
    r = client.get("/kbs/v1/keys", headers=admin_headers)
    assert r.status_code == 503 and "audit chain" in r.json()["detail"]
    assert _count(services) == forged
    with services.db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.sig.is_(None))) == 1
    latest = services.checkpointer.latest
    assert latest is not None and latest.seq < forged  # never checkpointed

    # the database restored: the alarm clears at the next check, key operations resume
    def restore(s: Session) -> None:
        s.execute(delete(AuditRecord).where(AuditRecord.seq == forged))
        last = s.scalars(select(AuditRecord).where(AuditRecord.seq == forged - 1)).one()
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=last.seq, hash=last.hash))

    _dba(services, restore)
    _eventually(lambda: client.get("/readyz").status_code == 200)
    assert client.post("/kbs/v1/keys", json=AES, headers=admin_headers).status_code == 201
    assert _metric(client, "keybroker_audit_chain_alarm ") == 0


def test_a_replica_notices_its_tail_cut_off(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    for _ in range(3):
        assert client.post("/kbs/v1/keys", json=AES, headers=admin_headers).status_code == 201
    n = _count(services)

    def cut(s: Session) -> None:
        s.execute(delete(AuditRecord).where(AuditRecord.seq == n))
        last = s.scalars(select(AuditRecord).where(AuditRecord.seq == n - 1)).one()
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=last.seq, hash=last.hash))

    _dba(services, cut)
    r = client.post("/kbs/v1/keys", json=AES, headers=admin_headers)
    assert r.status_code == 503 and f"went back from record {n} to {n - 1}" in r.json()["detail"]


def _checkpointed(svc: Services, seq: int) -> Callable[[], bool]:
    return lambda: (cp := svc.checkpointer.latest) is not None and cp.seq == seq


@pytest.fixture
def second_replica(services: Services, tmp_path: Path) -> Iterator[Services]:
    """Another replica on the same database: its own data dir, the same (dev) unseal key."""
    data = tmp_path / "replica-b"
    data.mkdir()
    shutil.copy(services.settings.data_dir / "dev-unseal.key", data / "dev-unseal.key")
    # the token signing key is shared by hand until replicas share it through the database
    shutil.copy(services.settings.data_dir / "token-signing-key.pem", data / "token-signing-key.pem")
    svc = Services.build(Settings(data_dir=data, database=services.db.url, dev=True))
    yield svc
    svc.db.dispose()


def test_replicas_extend_each_others_records(
    client: TestClient, services: Services, second_replica: Services, admin_headers: dict[str, str]
) -> None:
    b_headers = {"Authorization": "Bearer " + second_replica.tokens.mint("admin", ["*:*"])}
    with TestClient(create_app(second_replica), base_url="https://testserver") as b:
        for _ in range(3):
            assert client.post("/kbs/v1/keys", json=AES, headers=admin_headers).status_code == 201
            assert b.post("/kbs/v1/keys", json=AES, headers=b_headers).status_code == 201
        n = _count(services)
        for svc in (services, second_replica):
            _eventually(_checkpointed(svc, n))
            assert svc.checkpointer.guard.alarm is None
    a, b_cp = services.checkpointer.latest, second_replica.checkpointer.latest
    assert a is not None and b_cp is not None
    assert a.hash == b_cp.hash and a.record_key == b_cp.record_key  # one chain, one record key
    with services.db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.sig.is_(None))) == 0


# --- checkpoints over HTTP, and records written while sealed -------------------------------------------


def test_the_checkpoint_endpoint_serves_the_newest_signed_checkpoint(
    client: TestClient, services: Services, admin_headers: dict[str, str], tmp_path: Path
) -> None:
    reader = token_headers(services, "audit:read")
    assert client.post("/kbs/v1/keys", json=AES, headers=admin_headers).status_code == 201
    n = _count(services)
    _eventually(lambda: client.get("/kbs/v1/audit/checkpoint", headers=reader).json()["seq"] == n)
    out = client.get("/kbs/v1/audit/checkpoint", headers=reader).json()
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(out["public_key"]))
    cp = checkpoint.parse(out["line"], public)  # the signature verifies
    assert (cp.seq, cp.hash, cp.key_id) == (n, out["hash"], out["key_id"])
    assert out["key_id"] == checkpoint.key_id(public)
    last = client.get(f"/kbs/v1/audit?after={n - 1}", headers=reader).json()
    assert last[0]["hash"] == out["hash"] and last[0]["sig"]
    forbidden = client.get("/kbs/v1/audit/checkpoint", headers=token_headers(services, "keys:search"))
    assert forbidden.status_code == 403

    # an auditor pins the served public key and verifies with it; another key is refused
    pinned, other = tmp_path / "checkpoint.pub", tmp_path / "other.pub"
    pinned.write_text(out["public_key"] + "\n")
    other.write_text(base64.b64encode(bytes(range(32))).decode())
    args = ["audit", "verify", "--data-dir", str(services.settings.data_dir), "--database", services.db.url]
    r = CliRunner().invoke(cli, [*args, "--checkpoint-key", str(pinned)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, [*args, "--checkpoint-key", str(other)])
    assert r.exit_code == 1 and "checkpoint-file check" in r.output and "signed by checkpoint key" in r.output


def test_records_written_while_sealed_are_unsigned_and_verify_once_checkpointed(
    tmp_path: Path, database_url: str
) -> None:
    svc = Services.build(Settings(data_dir=tmp_path / "data", database=database_url))
    try:
        with TestClient(create_app(svc), base_url="https://testserver") as c:
            out = c.post("/sys/v1/init", json={"shares": 1, "threshold": 1}).json()  # sealed: unsigned
            h = {"Authorization": "Bearer " + out["admin_token"]}
            assert c.get("/kbs/v1/audit").status_code == 401  # refused while sealed: unsigned
            assert c.post("/sys/v1/unseal", json={"key": out["unseal_shares"][0]}).status_code == 200
            assert c.post("/kbs/v1/keys", json=AES, headers=h).status_code == 201
            assert c.post("/sys/v1/seal", headers=h).status_code == 200  # recorded before sealing
            records = [
                (r["action"], r["outcome"], r["sig"] is not None)
                for r in c.get("/kbs/v1/audit", headers=h).json()
            ]
        assert records == [
            ("token.create", "success", False),  # the initial admin token, minted before the init
            ("sys.init", "success", False),
            ("audit.read", "denied", False),
            ("sys.unseal", "success", True),
            ("key.create", "success", True),
            ("sys.seal", "success", True),
        ]
        r = CliRunner().invoke(
            cli, ["audit", "verify", "--data-dir", str(tmp_path / "data"), "--database", database_url]
        )
        assert r.exit_code == 0, r.output
        assert (
            "3 checked" in r.output and "3 sealed-time records unsigned, covered by checkpoints" in r.output
        )
    finally:
        svc.db.dispose()
