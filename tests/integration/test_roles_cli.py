"""``keybroker role`` and ``keybroker token create --roles`` against a running server: a role
changed on the operator's host reaches the server's tokens within the role cache's seconds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.server import Server, keybroker

from keybroker.auth.rolestore import CACHE_SECONDS


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", extra=["--dev"]).start()
    yield srv
    srv.stop()


def _kb(server: Server, *args: str) -> str:
    r = keybroker(*args, "--data-dir", str(server.data_dir))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _eventually(server: Server, token: str, path: str, status: int) -> None:
    deadline = time.monotonic() + CACHE_SECONDS + 2
    with server.client(token) as c:
        while c.get(path).status_code != status:
            assert time.monotonic() < deadline, f"{path} still not {status} after {CACHE_SECONDS} s"
            time.sleep(0.25)


def test_roles_from_the_cli(server: Server) -> None:
    _kb(server, "role", "create", "lister", "--permissions", "keys:search", "--description", "CI")
    shown = json.loads(_kb(server, "role", "show", "lister"))
    assert shown == {"name": "lister", "permissions": ["keys:search"], "description": "CI", "builtin": False}
    listed = [json.loads(line) for line in _kb(server, "role", "list", "--json").splitlines()]
    assert [r["name"] for r in listed] == ["key-admin", "policy-admin", "auditor", "operator", "lister"]

    token = _kb(server, "token", "create", "--roles", "lister", "--subject", "robot")
    _eventually(server, token, "/kbs/v1/keys", 200)
    _kb(server, "role", "update", "lister", "--permissions", "audit:read")
    _eventually(server, token, "/kbs/v1/keys", 403)
    _eventually(server, token, "/kbs/v1/audit", 200)
    _kb(server, "role", "delete", "lister", "--yes")
    _eventually(server, token, "/kbs/v1/audit", 403)

    auditor = _kb(server, "token", "create", "--roles", "auditor")
    with server.client(auditor) as c:
        assert c.get("/kbs/v1/audit").status_code == 200
        assert c.delete("/kbs/v1/keys/00000000-0000-4000-8000-000000000000").status_code == 403
        records = c.get("/kbs/v1/audit", params={"limit": 1000}).json()
    mine = [(r["action"], r["object_id"]) for r in records if r["action"].startswith("role.")]
    assert mine == [("role.create", "lister"), ("role.update", "lister"), ("role.delete", "lister")]
    assert all(r["actor"].startswith("cli:") for r in records if r["action"].startswith("role."))

    for bad, field in (
        (["role", "create", "auditor", "--permissions", "*:*"], "built-in"),
        (["role", "create", "x", "--permissions", "keys:fly"], "unknown permission"),
        (["token", "create", "--roles", "nope"], "no role 'nope'"),
        (["role", "delete", "operator", "--yes"], "built-in"),
    ):
        r = keybroker(*bad, "--data-dir", str(server.data_dir))
        assert r.returncode in (1, 2) and field in r.stderr, (bad, r.returncode, r.stderr)
