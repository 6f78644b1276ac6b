"""/sys/v1/unseal is unauthenticated (as in Vault): a bogus share given first spoils the operators'
attempt. Regressions (issue 11, item 6): the attempt can be reset, its progress is shown, failed
attempts are audited without the share, and failures are rate-limited per address and in all."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, select

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import LimitsSettings, Settings
from keybroker.seal import shamir

OPERATOR = ("198.51.100.10", 50001)
ATTACKER = ("203.0.113.66", 50002)

Build = Callable[..., Services]


@pytest.fixture
def build(tmp_path: Path, database_url: str) -> Iterator[Build]:
    made: list[Services] = []

    def make(**limits: int) -> Services:
        svc = Services.build(
            Settings(data_dir=tmp_path / "data", database=database_url, limits=LimitsSettings(**limits))
        )
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.db.dispose()


def _client(svc: Services, peer: tuple[str, int]) -> TestClient:
    return TestClient(create_app(svc), base_url="https://testserver", client=peer)


def _init(svc: Services, shares: int = 5, threshold: int = 3) -> tuple[list[str], dict[str, str]]:
    out = _client(svc, OPERATOR).post("/sys/v1/init", json={"shares": shares, "threshold": threshold}).json()
    return out["unseal_shares"], {"Authorization": f"Bearer {out['admin_token']}"}


def _bogus(*given: str) -> str:
    """A well-formed share of another key store: told apart only at the threshold. Its index (x,
    the last byte, random) is not one of the ``given`` shares' (that would be a duplicate)."""
    taken = {base64.b64decode(share)[-1] for share in given}
    while True:
        share = shamir.split(os.urandom(32), 3, 2)[0]
        if share[-1] not in taken:
            return base64.b64encode(share).decode()


def _same_index(share: str) -> str:
    """A forged share carrying the index of a genuine one."""
    raw = base64.b64decode(share)
    return base64.b64encode(os.urandom(len(raw) - 1) + raw[-1:]).decode()


def _audit(svc: Services, headers: dict[str, str], action: str) -> list[dict[str, Any]]:
    records = _client(svc, OPERATOR).get("/kbs/v1/audit?limit=1000", headers=headers).json()
    return [r for r in records if r["action"] == action]


def test_bogus_share_first_then_reset_then_the_real_shares_unseal(build: Build) -> None:
    svc = build()
    shares, admin = _init(svc)
    attacker, operator = _client(svc, ATTACKER), _client(svc, OPERATOR)

    # the attacker gets in first; the operators see progress they did not make
    assert attacker.post("/sys/v1/unseal", json={"key": _bogus()}).json()["progress"] == 1
    st = operator.get("/sys/v1/seal-status").json()
    assert (st["sealed"], st["progress"], st["t"], st["n"]) == (True, 1, 3, 5) and st["nonce"]

    r = operator.post("/sys/v1/unseal", json={"reset": True})
    assert r.status_code == 200, r.text
    assert (r.json()["progress"], r.json()["nonce"]) == (0, "")
    for share in shares[:2]:
        assert operator.post("/sys/v1/unseal", json={"key": share}).json()["sealed"] is True
    assert operator.post("/sys/v1/unseal", json={"key": shares[2]}).json()["sealed"] is False

    (reset,) = _audit(svc, admin, "sys.unseal.reset")
    assert reset["outcome"] == "success" and reset["actor"] == "anonymous"
    assert reset["details"]["discarded"] == 1 and reset["details"]["client"] == OPERATOR[0]
    assert reset["details"]["attempt"] == st["nonce"]


def test_unnoticed_bogus_share_fails_the_attempt_and_its_shares_are_discarded(build: Build) -> None:
    svc = build()
    shares, admin = _init(svc)
    attacker, operator = _client(svc, ATTACKER), _client(svc, OPERATOR)
    attacker.post("/sys/v1/unseal", json={"key": _bogus(*shares[:2])})
    operator.post("/sys/v1/unseal", json={"key": shares[0]})
    r = operator.post("/sys/v1/unseal", json={"key": shares[1]})  # the third share: the threshold
    assert r.status_code == 400 and r.json()["check"] == "wrong_key"
    assert "discarded" in r.json()["detail"]
    st = operator.get("/sys/v1/seal-status").json()
    assert (st["sealed"], st["progress"], st["nonce"]) == (True, 0, "")
    # a fresh attempt with the genuine shares (the same ones may be given again)
    for share in shares[:3]:
        st = operator.post("/sys/v1/unseal", json={"key": share}).json()
    assert st["sealed"] is False
    assert [r["outcome"] for r in _audit(svc, admin, "sys.unseal")] == ["failed", "success"]


def test_a_forged_share_with_a_genuine_index_is_told_and_reset_recovers(build: Build) -> None:
    svc = build()
    shares, _ = _init(svc)
    attacker, operator = _client(svc, ATTACKER), _client(svc, OPERATOR)
    assert attacker.post("/sys/v1/unseal", json={"key": _same_index(shares[0])}).status_code == 200
    r = operator.post("/sys/v1/unseal", json={"key": shares[0]})
    assert r.status_code == 400 and r.json()["check"] == "duplicate"
    assert "not genuine" in r.json()["detail"] and "--reset" in r.json()["detail"]
    operator.post("/sys/v1/unseal", json={"reset": True})
    for share in shares[:3]:
        st = operator.post("/sys/v1/unseal", json={"key": share}).json()
    assert st["sealed"] is False


def test_progress_is_reported_as_vault_does(build: Build) -> None:
    svc = build()
    shares, admin = _init(svc, 4, 3)
    c = _client(svc, OPERATOR)
    first = c.post("/sys/v1/unseal", json={"key": shares[0]}).json()
    assert (first["progress"], first["t"], first["n"], first["threshold"], first["shares"]) == (1, 3, 4, 3, 4)
    second = c.post("/sys/v1/unseal", json={"key": shares[1]}).json()
    assert second["progress"] == 2 and second["nonce"] == first["nonce"] != ""  # one attempt
    assert c.get("/sys/v1/seal-status").json() == second
    c.post("/sys/v1/unseal", json={"reset": True})
    again = c.post("/sys/v1/unseal", json={"key": shares[1]}).json()
    assert again["progress"] == 1 and again["nonce"] not in ("", first["nonce"])  # a new attempt
    for share in shares[2:]:
        done = c.post("/sys/v1/unseal", json={"key": share}).json()
    assert (done["sealed"], done["progress"], done["nonce"]) == (False, 0, "")
    # once unsealed, a share changes nothing
    assert c.post("/sys/v1/unseal", json={"key": shares[0]}).json() == done
    assert c.post("/sys/v1/seal", headers=admin).json()["progress"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "key"),
        ({"reset": True, "key": "AAAA"}, "reset"),
        ({"reset": "yes"}, "reset"),
    ],
)
def test_unseal_body_is_either_a_key_or_reset(build: Build, body: dict[str, Any], field: str) -> None:
    svc = build()
    _init(svc)
    r = _client(svc, OPERATOR).post("/sys/v1/unseal", json=body)
    assert r.status_code == 400 and r.json()["field"] == field
    assert r.headers["content-type"] == "application/problem+json"


def _needles(share_b64: str) -> list[bytes]:
    """Every form of a share (and of its value part) that must not be stored."""
    raw = base64.b64decode(share_b64 + "=" * (-len(share_b64) % 4))
    out: list[bytes] = []
    for part in (raw, raw[:-1]):
        out += [
            part,
            base64.b64encode(part),
            base64.b64encode(part).rstrip(b"="),
            base64.urlsafe_b64encode(part).rstrip(b"="),
            part.hex().encode(),
            part.hex().upper().encode(),
            hashlib.sha256(part).hexdigest().encode(),
            hashlib.sha256(base64.b64encode(part)).hexdigest().encode(),
        ]
    return out + [share_b64.encode()]


def _dump_audit(svc: Services) -> list[bytes]:
    """Every stored value of the audit tables, as bytes."""
    meta = MetaData()
    meta.reflect(svc.db.engine)
    values: list[bytes] = []
    with svc.db.engine.connect() as conn:
        for table in meta.sorted_tables:
            if not table.name.startswith("audit"):
                continue
            for row in conn.execute(select(table)):
                for value in row:
                    values.append(value if isinstance(value, bytes) else str(value).encode())
    return values


def test_failed_attempts_are_audited_without_share_material(
    build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    svc = build()
    shares, admin = _init(svc)
    attacker, operator = _client(svc, ATTACKER), _client(svc, OPERATOR)
    bogus = _bogus(shares[0], shares[1])
    truncated = shares[3][:-4]  # a genuine share cut short: 30 bytes
    caplog.set_level(logging.DEBUG)

    attempts = [
        (attacker, "not base64!", "malformed"),
        (operator, truncated, "malformed"),
        (attacker, base64.b64encode(os.urandom(32) + b"\x00").decode(), "malformed"),  # index 0
        (operator, shares[0], None),
        (operator, shares[0], "duplicate"),
        (attacker, bogus, None),
        (operator, shares[1], "wrong_key"),
    ]
    for who, share, check in attempts:
        r = who.post("/sys/v1/unseal", json={"key": share})
        assert r.status_code == (200 if check is None else 400), r.text
        if check is not None:
            assert r.json()["check"] == check
        assert share not in r.text

    failed = _audit(svc, admin, "sys.unseal")
    assert [(f["outcome"], f["details"]["check"]) for f in failed] == [
        ("failed", c) for _, _, c in attempts if c is not None
    ]
    assert {f["details"]["client"] for f in failed} == {ATTACKER[0], OPERATOR[0]}
    assert all(f["actor"] == "anonymous" and f["reason"] for f in failed)
    wrong = failed[-1]
    assert wrong["details"]["discarded"] == 3 and wrong["details"]["attempt"]
    assert "30 bytes, expected 33" in failed[1]["reason"]

    # no form of any share given, nor the key the wrong ones combined to, is stored or logged
    combined = base64.b64encode(
        shamir.combine([base64.b64decode(s) for s in (shares[0], bogus, shares[1])])
    ).decode()
    needles = [n for s in [*shares, bogus, truncated, combined] for n in _needles(s)]
    stored = _dump_audit(svc)
    assert any(b"30 bytes, expected 33" in value for value in stored)  # the records are read
    for needle in needles:
        assert not any(needle in value for value in stored), needle
        assert needle.decode("latin-1") not in caplog.text


def test_failures_are_rate_limited_per_address(build: Build) -> None:
    svc = build(unseal_failures_per_client_per_minute=3, unseal_failures_per_minute=100)
    shares, admin = _init(svc)
    attacker = _client(svc, ATTACKER)
    for _ in range(3):
        assert attacker.post("/sys/v1/unseal", json={"key": "AAAA"}).status_code == 400
    for body in ({"key": shares[0]}, {"key": "AAAA"}, {"reset": True}):
        r = attacker.post("/sys/v1/unseal", json=body)
        assert r.status_code == 429, r.text
        assert r.headers["content-type"] == "application/problem+json"
        retry = int(r.headers["Retry-After"])
        assert 1 <= retry <= 20 and r.json()["retry_after"] == retry  # 3 a minute: one every 20 s
        assert "from this address" in r.json()["detail"]
    # a refused request is not looked at: no progress, no audit record
    assert _client(svc, OPERATOR).get("/sys/v1/seal-status").json()["progress"] == 0
    assert len(_audit(svc, admin, "sys.unseal")) == 3

    # another address is not held back by this one's failures
    operator = _client(svc, OPERATOR)
    for share in shares[:3]:
        assert operator.post("/sys/v1/unseal", json={"key": share}).status_code == 200
    assert operator.get("/sys/v1/seal-status").json()["sealed"] is False


def test_ipv6_addresses_of_one_64_share_a_bucket(build: Build) -> None:
    svc = build(unseal_failures_per_client_per_minute=2, unseal_failures_per_minute=100)
    _init(svc)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::ffff"):
        assert _client(svc, (host, 1)).post("/sys/v1/unseal", json={"key": "AAAA"}).status_code == 400
    assert _client(svc, ("2001:db8:1:2::3", 1)).post("/sys/v1/unseal", json={"key": "A"}).status_code == 429
    assert _client(svc, ("2001:db8:1:3::1", 1)).post("/sys/v1/unseal", json={"key": "A"}).status_code == 400


def test_failures_are_rate_limited_in_all(build: Build) -> None:
    svc = build(unseal_failures_per_client_per_minute=10, unseal_failures_per_minute=4)
    shares, _ = _init(svc)
    for i in range(4):
        peer = (f"192.0.2.{i + 1}", 40000)
        assert _client(svc, peer).post("/sys/v1/unseal", json={"key": "AAAA"}).status_code == 400
    r = _client(svc, OPERATOR).post("/sys/v1/unseal", json={"key": shares[0]})
    assert r.status_code == 429 and "from all addresses" in r.json()["detail"]
    assert 1 <= int(r.headers["Retry-After"]) <= 15  # 4 a minute: one every 15 s
