"""``keybroker operator integrity`` against a real server: the rows a database writer changed or
that predate integrity tags are listed, refused, and adopted only when asked
(``keybroker.seal.integrity``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.server import Server, keybroker

from keybroker.tee import sim


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", extra=["--dev"]).start()
    yield srv
    srv.stop()


def _cli(server: Server, *args: str) -> tuple[int, str, str]:
    r = keybroker("operator", "integrity", *args, "--data-dir", str(server.data_dir))
    return r.returncode, r.stdout, r.stderr


def test_check_and_adopt_from_the_cli(server: Server) -> None:
    token = keybroker(
        "token", "create", "--data-dir", str(server.data_dir), "--permissions", "*:*", "--ttl", "10m"
    ).stdout.strip()
    with server.client(token) as c:
        policy_id = c.post("/kbs/v1/key-transfer-policies", json=sim.sim_policy("sgx")).json()["id"]
        r = c.post(
            "/kbs/v1/keys",
            json={
                "key_information": {"algorithm": "AES", "key_length": 256},
                "transfer_policy_id": policy_id,
            },
        )
        assert r.status_code == 201, r.text
    code, out, err = _cli(server, "--token", token)
    assert code == 0 and "verified: 1 transfer_policies, 1 keys, 0 kbs_resources, 0 tpm_aks" in out, err

    # as before the upgrade: no tags; then one policy loosened by hand
    with sqlite3.connect(server.data_dir / "keybroker.db") as db:
        db.execute("UPDATE keys SET integrity_tag = NULL")
        db.execute("UPDATE transfer_policies SET body = json_set(body, '$.allow_debug', 1)")
    code, out, _ = _cli(server, "--token", token)
    assert code == 1
    assert "untagged  keys" in out and "changed   transfer_policies " + policy_id in out

    code, _, err = _cli(server, "--include-changed", "--token", token)
    assert code == 2 and "--include-changed goes with --adopt" in err
    code, out, _ = _cli(server, "--adopt", "--token", token)
    assert code == 1 and "adopted   keys" in out and "changed   transfer_policies" in out
    code, out, _ = _cli(server, "--adopt", "--include-changed", "--token", token, "--json")
    assert code == 0 and '"state": "adopted"' in out

    # a token without sys:integrity is refused
    reader = keybroker(
        "token", "create", "--data-dir", str(server.data_dir), "--permissions", "keys:search"
    ).stdout.strip()
    code, _, err = _cli(server, "--token", reader)
    assert code == 1 and "403" in err
