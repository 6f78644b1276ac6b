"""Auto-unseal through SoftHSM (PKCS#11 seal) and OpenBao Transit: init gives recovery shares, a
restart unseals by itself, a lost seal backend is survived with recovery shares or by waiting."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.helpers import openbao, softhsm

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import Settings


def _build(data_dir: Path, seal: dict[str, Any]) -> tuple[Services, TestClient]:
    svc = Services.build(Settings(data_dir=data_dir, database=f"sqlite:///{data_dir / 'kb.db'}", seal=seal))
    return svc, TestClient(create_app(svc), base_url="https://testserver", raise_server_exceptions=False)


def _seal_setup(
    request: pytest.FixtureRequest, kind: str
) -> tuple[dict[str, Any], Callable[[], None], Callable[[], None]]:
    if kind == "pkcs11":
        h: softhsm.SoftHsm = request.getfixturevalue("hsm")
        cfg = {
            "type": "pkcs11",
            "library": str(h.library),
            "token_label": h.label,
            "pin_file": str(h.pin_file()),
            "key_label": f"unseal-{uuid.uuid4().hex[:8]}",
        }
        return cfg, h.pull, h.plug
    bao: openbao.BaoServer = request.getfixturevalue("bao_tls")
    mount = f"transit-{uuid.uuid4().hex[:6]}"
    bao.api("POST", f"sys/mounts/{mount}", {"type": "transit"})
    cfg = {
        "type": "transit",
        "address": bao.address,
        "ca_file": str(bao.tls_ca),
        "auth": {"method": "token", "token": bao.root_token},
        "mount": mount,
    }
    return cfg, bao.stop, lambda: bao.start() and None


@pytest.mark.parametrize("kind", ["pkcs11", "transit"])
def test_auto_unseal_lifecycle(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    seal, take_away, bring_back = _seal_setup(request, kind)
    data = tmp_path / "data"
    svc, client = _build(data, seal)
    assert client.get("/sys/v1/seal-status").json()["initialized"] is False

    out = client.post("/sys/v1/init", json={"shares": 3, "threshold": 2}).json()
    recovery, token = out["unseal_shares"], out["admin_token"]
    assert len(recovery) == 3 and len(set(recovery)) == 3
    assert out["recovery"] is True  # labelled as recovery shares, not unseal shares
    st = client.get("/sys/v1/seal-status").json()
    assert st["sealed"] is False and st["seal_type"] == kind  # init with an auto seal leaves it unsealed
    h = {"Authorization": f"Bearer {token}"}
    r = client.post(
        "/kbs/v1/keys", json={"key_information": {"algorithm": "AES", "key_length": 256}}, headers=h
    )
    assert r.status_code == 201, r.text
    kid = r.json()["key_information"]["id"]
    svc.db.dispose()

    # restart: unsealed automatically, the same root key opens the same data
    svc2, c2 = _build(data, seal)
    assert c2.get("/sys/v1/seal-status").json()["sealed"] is False
    with svc2.db.session() as s:
        assert len(svc2.keystore.fetch(s, kid, None)) == 32
    svc2.db.dispose()

    # restart while the seal backend is gone: sealed, 503; recovery shares open it by hand
    take_away()
    try:
        svc3, c3 = _build(data, seal)
        assert c3.get("/sys/v1/seal-status").json()["sealed"] is True
        assert c3.get(f"/kbs/v1/keys/{kid}", headers=h).status_code == 503
        assert c3.post("/sys/v1/unseal", json={"key": recovery[0]}).json()["sealed"] is True
        assert c3.post("/sys/v1/unseal", json={"key": recovery[2]}).json()["sealed"] is False
        assert c3.get(f"/kbs/v1/keys/{kid}", headers=h).status_code == 200
        svc3.db.dispose()
        svc4, c4 = _build(data, seal)  # still gone: this one waits for the backend
        assert c4.get("/sys/v1/seal-status").json()["sealed"] is True
    finally:
        bring_back()
    deadline = time.monotonic() + 20
    while svc4.barrier.sealed and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not svc4.barrier.sealed, "auto-unseal did not retry after the seal backend came back"
    assert c4.get(f"/kbs/v1/keys/{kid}", headers=h).status_code == 200
    svc4.db.dispose()


def test_wrong_recovery_shares_do_not_unseal(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    seal, take_away, bring_back = _seal_setup(request, "pkcs11")
    svc, client = _build(tmp_path / "a", seal)
    client.post("/sys/v1/init", json={"shares": 2, "threshold": 2})
    other, oc = _build(tmp_path / "b", {**seal, "key_label": seal["key_label"] + "-b"})
    foreign = oc.post("/sys/v1/init", json={"shares": 2, "threshold": 2}).json()["unseal_shares"]
    svc.db.dispose()
    other.db.dispose()
    take_away()
    try:
        svc2, c2 = _build(tmp_path / "a", seal)
        c2.post("/sys/v1/unseal", json={"key": foreign[0]})
        r = c2.post("/sys/v1/unseal", json={"key": foreign[1]})
        assert r.status_code == 400 and "wrong" in r.json()["detail"]
        assert svc2.barrier.sealed
        svc2.db.dispose()
    finally:
        bring_back()


def test_a_replica_started_before_init_unseals_once_another_initialized(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two replicas with the Transit seal on one database, both started before ``operator init``:
    the one that was not asked unseals by itself within seconds (before: it stayed sealed until
    restarted), and a replica sealed on purpose stays sealed."""
    seal, _, _ = _seal_setup(request, "transit")
    database = f"sqlite:///{tmp_path / 'kb.db'}"
    one = Services.build(Settings(data_dir=tmp_path / "one", database=database, seal=seal))
    two = Services.build(Settings(data_dir=tmp_path / "two", database=database, seal=seal))
    with (
        TestClient(create_app(one), base_url="https://testserver") as c1,
        TestClient(create_app(two), base_url="https://testserver") as c2,
    ):
        assert c2.get("/sys/v1/seal-status").json()["initialized"] is False
        out = c1.post("/sys/v1/init", json={"shares": 1, "threshold": 1}).json()
        deadline = time.monotonic() + 15
        while c2.get("/sys/v1/seal-status").json()["sealed"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c2.get("/sys/v1/seal-status").json()["sealed"] is False
        assert c2.get("/readyz").status_code == 200
        h = {"Authorization": f"Bearer {out['admin_token']}"}
        assert c2.post("/sys/v1/seal", headers=h).status_code == 200
        time.sleep(5)  # more than two polls
        assert c2.get("/sys/v1/seal-status").json()["sealed"] is True
    one.db.dispose()
    two.db.dispose()
