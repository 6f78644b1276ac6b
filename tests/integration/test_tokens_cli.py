"""``keybroker token`` against a running server: create, list, revoke, rotate-key."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.server import Server, keybroker

from keybroker.auth.registry import CACHE_SECONDS


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", extra=["--dev"]).start()
    yield srv
    srv.stop()


def _token(server: Server, *args: str) -> tuple[str, str]:
    r = keybroker("token", *args, "--data-dir", str(server.data_dir))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), r.stderr


def _list(server: Server, *args: str) -> list[dict[str, Any]]:
    out, _ = _token(server, "list", "--json", *args)
    return [json.loads(line) for line in out.splitlines()]


def _status(server: Server, token: str) -> int:
    with server.client(token) as c:
        return c.get("/kbs/v1/keys").status_code


def _eventually(server: Server, token: str, status: int) -> None:
    """A change made by the CLI reaches the server within CACHE_SECONDS."""
    deadline = time.monotonic() + CACHE_SECONDS + 2
    while _status(server, token) != status:
        assert time.monotonic() < deadline, f"still not {status} after {CACHE_SECONDS} s"
        time.sleep(0.25)


def test_create_list_revoke_rotate(server: Server) -> None:
    admin, err = _token(server, "create", "--permissions", "*:*", "--subject", "ops")
    admin_jti = err.split("token id (jti): ")[1].split(",")[0]
    robot, err = _token(server, "create", "--permissions", "keys:search", "--subject", "robot", "--ttl", "7d")
    robot_jti = err.split("token id (jti): ")[1].split(",")[0]
    assert _status(server, admin) == _status(server, robot) == 200

    listed = {t["jti"]: t for t in _list(server)}
    assert set(listed) == {admin_jti, robot_jti}
    assert listed[robot_jti]["subject"] == "robot" and listed[robot_jti]["issued_by"].startswith("cli:")
    assert robot not in json.dumps(listed)

    out, _ = _token(server, "revoke", robot_jti, "--reason", "rotated out")
    assert f"revoked {robot_jti}" in out
    _eventually(server, robot, 401)
    assert _status(server, admin) == 200
    assert {t["jti"] for t in _list(server)} == {admin_jti}

    # rotation asks first; without a yes nothing changes
    r = keybroker("token", "rotate-key", "--data-dir", str(server.data_dir), input="n\n")
    assert r.returncode == 1 and "not rotated" in r.stderr
    assert _status(server, admin) == 200
    _token(server, "rotate-key", "--yes")
    _eventually(server, admin, 401)
    fresh, _ = _token(server, "create", "--permissions", "*:*")
    _eventually(server, fresh, 200)
    statuses = {t["subject"]: t["status"] for t in _list(server, "--all")}
    assert statuses == {"ops": "key retired", "robot": "revoked", "admin": "active"}

    # the audit log has each step, with who did it
    with server.client(fresh) as c:
        records = c.get("/kbs/v1/audit", params={"limit": 1000}).json()
    actions = [(r["action"], r["actor"].split(":")[0]) for r in records if r["action"].startswith("token.")]
    assert actions == [
        ("token.create", "cli"),
        ("token.create", "cli"),
        ("token.revoke", "cli"),
        ("token.key.rotate", "cli"),
        ("token.create", "cli"),
    ]


def test_bad_input_exits_2(server: Server) -> None:
    data = str(server.data_dir)
    for args, says in [
        (["create", "--permissions", "keys:frobnicate"], "unknown permission"),
        (["create", "--permissions", "*:*", "--ttl", "1y"], "ttl"),
        (["create", "--permissions", "*:*", "--subject", "two words"], "subject"),
        (["create", "--permissions", "*:*", "--client-permissions", "a b"], "client permission"),
    ]:
        r = keybroker("token", *args, "--data-dir", data)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = keybroker("token", "revoke", "00000000-0000-0000-0000-000000000000", "--data-dir", data)
    assert r.returncode == 1 and "no token" in r.stderr
    assert _list(server) == []  # nothing was issued
