"""`keybroker operator unseal --reset`, progress in `operator status`, and the failure limit, against
a real server over HTTPS (issue 11, item 6)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.server import Server, keybroker

from keybroker.seal import shamir


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "keybroker.toml"
    config.write_text("[limits]\nunseal_failures_per_client_per_minute = 2\n")
    srv = Server(tmp_path / "data", extra=["--config", str(config)]).start()
    yield srv
    srv.stop()


def _cli(server: Server, *args: str) -> tuple[int, str, str]:
    r = keybroker(*args, "--server", server.url, "--data-dir", str(server.data_dir))
    return r.returncode, r.stdout, r.stderr


def test_reset_progress_and_the_failure_limit_from_the_cli(server: Server) -> None:
    code, out, err = _cli(server, "operator", "init", "--shares", "3", "--threshold", "2", "--json")
    assert code == 0, err
    init = json.loads(out)
    shares, admin = init["unseal_shares"], init["admin_token"]
    bogus = base64.b64encode(shamir.split(os.urandom(32), 3, 2)[0]).decode()

    # someone else's share first: the operator sees progress they did not make, and resets
    code, out, _ = _cli(server, "operator", "unseal", bogus)
    assert code == 0 and "sealed: 1/2 shares given (unseal attempt " in out
    code, out, _ = _cli(server, "operator", "status")
    assert code == 1 and "progress     1/2 (unseal attempt " in out
    code, _, err = _cli(server, "operator", "unseal", "--reset", shares[0])
    assert code == 2 and "not both" in err
    code, out, err = _cli(server, "operator", "unseal", "--reset")
    assert code == 0 and "unseal attempt reset: 0/2" in out, err
    for share in shares[:2]:
        code, out, _ = _cli(server, "operator", "unseal", share)
    assert code == 0 and "unsealed" in out

    # failures are limited (2 a minute from an address: one every 30 s): this address's are used
    # up quickly, then the CLI is told when to retry
    with server.client(admin) as c:
        assert c.post("/sys/v1/seal").status_code == 200
        statuses = [c.post("/sys/v1/unseal", json={"key": "not-a-share"}).status_code for _ in range(3)]
    assert statuses[-1] == 429 and set(statuses) <= {400, 429}
    code, _, err = _cli(server, "operator", "unseal", shares[0])
    assert code == 1 and "429" in err and "Retry-After: " in err

    r = keybroker("audit", "list", "--data-dir", str(server.data_dir), "--json")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    unseals = [(x["action"], x["outcome"]) for x in records if x["action"].startswith("sys.unseal")]
    assert unseals[:2] == [("sys.unseal.reset", "success"), ("sys.unseal", "success")]
    assert unseals[2:] == [("sys.unseal", "failed")] * statuses.count(400)
    for share in [*shares, bogus]:
        assert share not in r.stdout
