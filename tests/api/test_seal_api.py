"""Init, unseal, seal over HTTP; key operations answer 503 while sealed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import Settings


@pytest.fixture
def sealed_services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    svc = Services.build(Settings(data_dir=tmp_path / "data", database=database_url))
    yield svc
    svc.db.dispose()


def test_init_unseal_seal_cycle(sealed_services: Services, tmp_path: Path, database_url: str) -> None:
    client = TestClient(create_app(sealed_services), base_url="https://testserver")
    st = client.get("/sys/v1/seal-status").json()
    assert st == {
        "initialized": False,
        "sealed": True,
        "seal_type": None,
        "shares": 0,
        "threshold": 0,
        "progress": 0,
        "t": 0,
        "n": 0,
        "nonce": "",
    }
    assert client.get("/readyz").status_code == 503
    assert "not initialized" in client.get("/readyz").json()["detail"]

    r = client.post("/sys/v1/init", json={"shares": 5, "threshold": 3})
    assert r.status_code == 200
    out = r.json()
    shares, token = out["unseal_shares"], out["admin_token"]
    assert len(shares) == 5 and len(set(shares)) == 5
    h = {"Authorization": f"Bearer {token}"}
    assert client.post("/sys/v1/init", json={}).status_code == 409

    r = client.get("/kbs/v1/keys", headers=h)
    assert r.status_code == 503 and "sealed" in r.json()["detail"]

    assert client.post("/sys/v1/unseal", json={"key": "!!!"}).status_code == 400
    assert client.post("/sys/v1/unseal", json={"key": shares[0]}).json()["progress"] == 1
    assert client.post("/sys/v1/unseal", json={"key": shares[0]}).status_code == 400  # same share twice
    assert client.post("/sys/v1/unseal", json={"key": shares[3]}).json()["progress"] == 2
    st = client.post("/sys/v1/unseal", json={"key": shares[4]}).json()
    assert st["sealed"] is False and st["progress"] == 0
    assert client.get("/readyz").status_code == 200

    r = client.post(
        "/kbs/v1/keys", json={"key_information": {"algorithm": "AES", "key_length": 256}}, headers=h
    )
    assert r.status_code == 201
    kid = r.json()["key_information"]["id"]

    assert client.post("/sys/v1/seal").status_code == 401
    assert client.post("/sys/v1/seal", headers=h).json()["sealed"] is True
    assert client.get(f"/kbs/v1/keys/{kid}", headers=h).status_code == 503

    # a new process (restart) comes up sealed; the right shares open the same data
    restarted = Services.build(Settings(data_dir=tmp_path / "data", database=database_url))
    c2 = TestClient(create_app(restarted), base_url="https://testserver")
    assert c2.get("/sys/v1/seal-status").json()["sealed"] is True
    for s in shares[1:4]:
        c2.post("/sys/v1/unseal", json={"key": s})
    with restarted.db.session() as s:
        assert len(restarted.keystore.fetch(s, kid, None)) == 32
    restarted.db.dispose()


def test_wrong_shares_do_not_unseal(sealed_services: Services) -> None:
    client = TestClient(create_app(sealed_services), base_url="https://testserver")
    client.post("/sys/v1/init", json={"shares": 3, "threshold": 2})
    # shares of another key store: right length, wrong polynomial
    from keybroker.seal import shamir

    foreign = shamir.split(b"\x01" * 32, 3, 2)
    import base64

    client.post("/sys/v1/unseal", json={"key": base64.b64encode(foreign[0]).decode()})
    r = client.post("/sys/v1/unseal", json={"key": base64.b64encode(foreign[1]).decode()})
    assert r.status_code == 400 and "unseal key is wrong" in r.json()["detail"]
    assert r.json()["check"] == "wrong_key"
    st = client.get("/sys/v1/seal-status").json()
    assert st["sealed"] is True and st["progress"] == 0 and st["nonce"] == ""  # the attempt discarded


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.get("/kbs/v1/version")
    text = client.get("/metrics").text
    assert 'keybroker_http_requests_total{method="GET",route="/kbs/v1/version",status="200"}' in text


def test_metrics_labels_stay_bounded(client: TestClient) -> None:
    for i in range(5):
        assert client.get(f"/no/such/path/{i}").status_code == 404
        client.request("BREW", f"/kbs/v1/keys/{i}")
    text = client.get("/metrics").text
    assert 'keybroker_http_requests_total{method="GET",route="<unmatched>",status="404"} 5.0' in text
    assert "/no/such/path" not in text and "BREW" not in text
    assert 'method="other"' in text
