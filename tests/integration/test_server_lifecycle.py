"""A real server process over HTTPS, driven by the CLI as an operator would."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from tests.helpers.postgres import free_port
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


def test_a_port_in_use_is_one_line_and_creates_nothing(server: Server, tmp_path: Path) -> None:
    """Before: "listening on ..." was printed, then uvicorn's own error after the service was built."""
    elsewhere = tmp_path / "elsewhere"
    r = keybroker("serve", "--data-dir", str(elsewhere), "--listen", f"127.0.0.1:{server.port}")
    assert r.returncode == 2, r.stderr
    assert "listening on" not in r.stderr and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot listen on 127.0.0.1:{server.port}: the address is already in use (another "
        "keybroker, or another program, listens there): stop it, or give another --listen"
    ], r.stderr
    assert not elsewhere.exists()
    # the running server's record is untouched
    assert json.loads((server.data_dir / "server.json").read_text())["url"] == server.url


def test_a_second_dev_server_without_the_unseal_key_is_one_line(tmp_path: Path) -> None:
    """``--dev`` keeps its unseal key in the data dir that initialized the key store. Before, a
    --dev server on the same database with another data dir (or with the key deleted) died with a
    FileNotFoundError traceback."""
    first = Server(tmp_path / "first", extra=["--dev"]).start()
    first.stop()
    database = f"sqlite:///{first.data_dir / 'keybroker.db'}"
    second = tmp_path / "second"
    args = ["serve", "--dev", "--database", database, "--listen", f"127.0.0.1:{free_port()}"]
    r = keybroker(*args, "--data-dir", str(second))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"its unseal key {second}/dev-unseal.key was deleted" in errors[0], r.stderr
    assert "for one data dir on one node" in errors[0] and "listening on" not in r.stderr
    # another data dir's key does not open it either: said so, not "these shares do not reconstruct it"
    other = Server(tmp_path / "other", extra=["--dev"]).start()
    other.stop()
    (second / "dev-unseal.key").write_bytes((other.data_dir / "dev-unseal.key").read_bytes())
    r = keybroker(*args, "--data-dir", str(second))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert f"{second}/dev-unseal.key does not open the key store in this database" in errors[0]
    # the first data dir with its key deleted
    (first.data_dir / "dev-unseal.key").unlink()
    r = keybroker("serve", "--dev", "--data-dir", str(first.data_dir), "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "dev-unseal.key was deleted" in r.stderr


def test_serve_help_shows_defaults_and_environment_variables() -> None:
    r = keybroker("serve", "--help", env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert r.returncode == 0
    rows = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("│ --")}
    for option, envvar, default in [
        ("--config", "KEYBROKER_CONFIG", None),
        ("--data-dir", "KEYBROKER_DATA_DIR", "./data"),
        ("--listen", "KEYBROKER_LISTEN", "127.0.0.1:9443"),
        ("--database", "KEYBROKER_DATABASE", "SQLite in the data dir"),
        ("--insecure-http", "KEYBROKER_INSECURE_HTTP", "false"),
        ("--dev", "KEYBROKER_DEV", "false"),
        ("--log-format", "KEYBROKER_LOG_FORMAT", "text"),
    ]:
        assert f"[env var: {envvar}]" in rows[option], rows
        if default is not None:
            assert f"[default: ({default})]" in rows[option], rows
    text = " ".join(r.stdout.split())
    assert "Exit codes: 0 ok; 1 failed" in text and "4 TLS verification failed" in text


def test_the_environment_sets_where_serve_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("KEYBROKER_LISTEN", f"127.0.0.1:{port}")  # the spawned server's only --listen
    server = Server(
        tmp_path / "data", port=port, argv=["serve", "--data-dir", str(tmp_path / "data")]
    ).start()
    try:
        assert json.loads((server.data_dir / "server.json").read_text())["listen"] == f"127.0.0.1:{port}"
        r = keybroker("operator", "status", "--data-dir", str(server.data_dir))
        assert r.returncode == 1 and "initialized  False" in r.stdout, r.stderr
    finally:
        server.stop()
