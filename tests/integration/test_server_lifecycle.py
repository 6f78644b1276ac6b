"""A real server process over HTTPS, driven by the CLI as an operator would."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from tests.helpers.server import Server, keybroker


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data").start()
    yield srv
    srv.stop()


def _cli(server: Server, *args: str, input: str | None = None) -> tuple[int, str, str]:
    r = keybroker(*args, "--server", server.url, "--data-dir", str(server.data_dir), input=input)
    return r.returncode, r.stdout, r.stderr


def test_operator_flow_and_restart(server: Server) -> None:
    # HTTPS with the TLS anchor; the printed fingerprint is its SHA-384
    ca = x509.load_pem_x509_certificate(server.ca.read_bytes())
    assert ca.fingerprint(hashes.SHA384()).hex() in server.log()

    code, out, _ = _cli(server, "operator", "status")
    assert code == 1 and "initialized  False" in out

    code, out, err = _cli(server, "operator", "init", "--shares", "3", "--threshold", "2", "--json")
    assert code == 0, err
    init = json.loads(out)
    shares, admin = init["unseal_shares"], init["admin_token"]
    code, _, err = _cli(server, "operator", "init")
    assert code == 1 and "already initialized" in err

    code, out, _ = _cli(server, "operator", "unseal", input=shares[0] + "\n")
    assert code == 0 and "1/2" in out
    code, out, _ = _cli(server, "operator", "unseal", shares[2])
    assert code == 0 and "unsealed" in out
    assert _cli(server, "operator", "status")[0] == 0

    with server.client(admin) as c:
        r = c.post("/kbs/v1/keys", json={"key_information": {"algorithm": "EC", "curve_type": "secp384r1"}})
        assert r.status_code == 201, r.text
        kid = r.json()["key_information"]["id"]

    # a narrower token minted from the data dir
    r2 = keybroker(
        "token", "create", "--data-dir", str(server.data_dir), "--permissions", "keys:search", "--ttl", "5m"
    )
    assert r2.returncode == 0
    with server.client(r2.stdout.strip()) as c:
        assert [k["key_information"]["id"] for k in c.get("/kbs/v1/keys").json()] == [kid]
        assert c.delete(f"/kbs/v1/keys/{kid}").status_code == 403

    code, _, err = _cli(server, "operator", "seal", "--token", admin)
    assert code == 0, err
    with server.client(admin) as c:
        assert c.get("/readyz").status_code == 503

    # restart: sealed again until unsealed
    server.stop()
    server.start()
    with server.client(admin) as c:
        r = c.get(f"/kbs/v1/keys/{kid}")
        assert r.status_code == 503 and "sealed" in r.json()["detail"]
    for s in shares[:2]:
        _cli(server, "operator", "unseal", s)
    with server.client(admin) as c:
        assert c.get(f"/kbs/v1/keys/{kid}").status_code == 200

    # the audit chain verifies, then detects an edit and names the record
    r3 = keybroker("audit", "verify", "--data-dir", str(server.data_dir))
    assert r3.returncode == 0 and "intact" in r3.stdout
    r4 = keybroker("audit", "list", "--data-dir", str(server.data_dir), "--json")
    records = [json.loads(line) for line in r4.stdout.splitlines()]
    assert {"sys.init", "sys.unseal", "key.create", "sys.seal"} <= {r["action"] for r in records}
    target = next(r for r in records if r["action"] == "key.create")["seq"]
    con = sqlite3.connect(server.data_dir / "keybroker.db")
    con.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = ?", (target,))
    con.commit()
    con.close()
    r5 = keybroker("audit", "verify", "--data-dir", str(server.data_dir))
    assert r5.returncode == 1 and f"record {target}" in r5.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    r = keybroker("token", "create", "--data-dir", str(tmp_path / "nowhere"), "--permissions", "*:*")
    assert r.returncode == 2 and "no token signing key" in r.stderr
    r = keybroker("serve", "--insecure-http", "--listen", "0.0.0.0:1", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "loopback" in r.stderr
    r = keybroker("serve", "--listen", "nonsense", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "listen" in r.stderr
    assert "Traceback" not in r.stderr
